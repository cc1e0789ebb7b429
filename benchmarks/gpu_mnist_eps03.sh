#!/usr/bin/env bash
# Short GPU run: MNIST ε=0.3, dm-small, MAAR vs its base at equal epochs (IBP, MAAR-IBP, CROWN-IBP,
# MAAR-CROWN-IBP) for each seed, all trainings side by side on one GPU, then each evaluated on the
# test set. Usage: benchmarks/gpu_mnist_eps03.sh OUT_DIR
# Environment: EPOCHS (20), SEEDS ("0 1"), TRAIN_COUNT (all), EVAL_COUNT (10000), DEVICE (cuda),
# MAAR (the maar command), TRAIN_TIMEOUT (seconds the trainings may take together; unlimited).
set -u
out=${1:-runs/gpu-mnist-eps0.3}
epochs=${EPOCHS:-20}
maar=${MAAR:-maar}
objectives="ibp maar-ibp crown-ibp maar-crown-ibp"
mkdir -p "$out"
common=(--dataset mnist --model dm-small --eps 0.3 --epochs "$epochs" --warmup-epochs 1
        --ramp-epochs $(( epochs / 2 )) --lr-decay-epochs $(( epochs * 3 / 4 )),$(( epochs * 9 / 10 ))
        --eval-count 1000 --eval-crown-count 200 --device "${DEVICE:-cuda}" --no-progress)
[ -n "${TRAIN_COUNT:-}" ] && common+=(--train-count "$TRAIN_COUNT")
for seed in ${SEEDS:-0 1}; do
  for objective in $objectives; do
    timeout "${TRAIN_TIMEOUT:-0}" $maar train "${common[@]}" --seed "$seed" --objective "$objective" \
      --out "$out/$objective-s$seed" > "$out/$objective-s$seed.train.log" 2>&1 &
  done
done
wait
for run in "$out"/*/; do
  $maar evaluate "$run" --count "${EVAL_COUNT:-10000}" --crown-count 1000 > "${run%/}.eval.log" 2>&1 &
done
wait
tail -n 1 "$out"/*.train.log; cat "$out"/*.eval.log
