"""Where branch and bound's bounds stand against the LP they approximate, on instances it leaves open.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/relaxation_gap.py --instances open.csv \\
        [--rows 3] [--seconds 30] [--domains 3] [--refine] [--out gap.csv]

Per instance (rows of an ``instances.csv``; chain-shaped ReLU networks, such as ``maar export``'s), the
cascade runs with branch and bound stopped after ``--seconds``; then, for the root of the first open
disjunct and for the ``--domains`` open domains with the lowest bounds:

- *bound*: branch and bound's optimised α,β-CROWN bound of the margin (what decides the domain);
- *LP*: the minimum of the triangle ("Planet") LP relaxation with the domain's splits over the same
  intermediate bounds (HiGHS, :func:`maar_plugin.testing.milp.triangle_lp_minimum`): the best any choice of
  α and β can reach;
- *refined* (``--refine``): the bound again after every later ReLU layer's bounds are recomputed by CROWN
  under the domain's splits (β-CROWN's intermediate bounds), 20 optimisation steps.

An LP close to the bound says the optimisation is not what keeps the domain open; a refined bound close to
the bound says the intermediate bounds are not either: what is left is the single-neuron relaxation itself,
which only more branching or a stronger relaxation (multi-neuron, cutting planes) closes. On dm-small-sized
networks each LP takes one to four minutes. ``--out`` writes the rows as CSV.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import time
from pathlib import Path
from unittest import mock

import torch

from maar_plugin.atomic import atomic_write_text
from maar_plugin.testing.dense import dense_network
from maar_plugin.testing.milp import triangle_lp_minimum
from maar_plugin.verification import ModelCache, VerifyOptions, verify_instance
from maar_plugin.verification.instances import read_instances_csv
from maar_plugin.verification.run import cascade
from maar_plugin.verification.search.bab import BabOutcome, BranchAndBound, _Domains

FIELDS = ("instance", "verdict", "domain", "depth", "bound", "lp", "refined", "lp_seconds")


class Recording(BranchAndBound):
    """The cascade's branch and bound, kept (with its root domains) for inspection after it stops."""

    last: Recording | None = None

    def run(self, deadline: float) -> BabOutcome:
        Recording.last = self
        return super().run(deadline)

    def _bound(self, domains: _Domains, iterations: int, deadline: float):
        kept, found = super()._bound(domains, iterations, deadline)
        if not hasattr(self, "open_roots"):     # the first pass bounds the roots; ``kept`` becomes the store
            fields = (kept.disjunct, kept.signs, kept.alpha, kept.beta, kept.margin, kept.choice)
            self.open_roots = _Domains(*fields)
        return kept, found


def measure(search: Recording, domains: int, refine: bool) -> list[dict]:
    """Rows for the first open root and the ``domains`` lowest open domains of a stopped search."""
    network = dense_network(search.engine.graph)
    lower = search.lower.reshape(-1).double().cpu().numpy()
    upper = search.upper.reshape(-1).double().cpu().numpy()
    open_roots = search.open_roots
    picked: list[tuple[str, _Domains]] = []
    if len(open_roots):
        picked.append(("root", open_roots.pop(torch.arange(len(open_roots)) == 0)))
    store = search.open
    if store is not None and len(store):
        order = torch.argsort(store.margin)[:domains]
        taken = torch.zeros(len(store), dtype=torch.bool).index_fill_(0, order, True)
        chosen = store.pop(taken)
        for k in range(len(chosen)):
            picked.append((f"open {k + 1}", chosen.pop(torch.arange(len(chosen)) == 0)))
    rows = []
    for label, domain in picked:
        bounds, _ = search._relu_bounds(domain.signs)
        disjunct = int(domain.disjunct[0])
        started = time.monotonic()
        lp = triangle_lp_minimum(network, [(bounds[r][0][0].reshape(-1).double().cpu().numpy(),
                                            bounds[r][1][0].reshape(-1).double().cpu().numpy())
                                           for r in search.engine.relus],
                                 lower, upper, search.C[disjunct].double().cpu().numpy(),
                                 (search.offsets[disjunct] + search.thresholds[disjunct]).double().cpu().numpy())
        row = {"domain": label, "depth": int((domain.signs != 0).sum()), "bound": float(domain.margin[0]), "lp": lp,
               "lp_seconds": round(time.monotonic() - started, 1), "refined": ""}
        if refine:
            refined, search.refined = search.refined, [relu for relu in search.engine.relus[1:]
                                                       if search.unstable[relu].numel()]
            kept, _ = search._bound(_Domains(domain.disjunct, domain.signs, domain.alpha, domain.beta, None, None),
                                    20, math.inf)
            row["refined"] = float(kept.margin[0]) if len(kept) else "refuted"
            search.refined = refined
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=Path, required=True, help="an instances.csv (onnx, vnnlib, timeout)")
    parser.add_argument("--rows", type=int, default=None, help="only the first N rows")
    parser.add_argument("--seconds", type=float, default=30.0, help="the cascade's timeout per instance")
    parser.add_argument("--domains", type=int, default=3, help="open domains measured per instance")
    parser.add_argument("--refine", action="store_true", help="also bound them with refined intermediate bounds")
    parser.add_argument("--out", type=Path, default=None, help="write the rows as CSV")
    args = parser.parse_args()
    torch.set_num_threads(1)
    options = VerifyOptions(timeout=args.seconds)
    cache = ModelCache(options)
    rows: list[dict] = []
    print("instance | verdict | domain | depth | bound | LP | refined | LP s")
    for instance in read_instances_csv(args.instances)[:args.rows]:
        Recording.last = None
        with mock.patch.object(cascade, "BranchAndBound", Recording), contextlib.redirect_stderr(io.StringIO()):
            result = verify_instance(instance.onnx, instance.vnnlib, args.seconds, options, cache)
        name = f"{instance.onnx.stem}:{instance.vnnlib.stem}"
        if Recording.last is None or result.verdict not in ("timeout", "unknown"):
            print(f"{name} | {result.verdict} | (branch and bound did not stop with open domains)", flush=True)
            continue
        for row in measure(Recording.last, args.domains, args.refine):
            row.update(instance=name, verdict=result.verdict)
            rows.append(row)
            refined = row["refined"] if isinstance(row["refined"], str) else f"{row['refined']:.4f}"
            print(f"{name} | {result.verdict} | {row['domain']} | {row['depth']} | {row['bound']:.4f} | "
                  f"{row['lp']:.4f} | {refined} | {row['lp_seconds']}", flush=True)
    if args.out is not None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(args.out, buffer.getvalue())


if __name__ == "__main__":
    main()
