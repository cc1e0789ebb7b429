"""The ε schedule and the layered training configuration."""
import numpy as np
import pytest

from maar_plugin.errors import MaarError
from maar_plugin.training.config import build_config, load_yaml_mapping
from maar_plugin.training.schedule import SmoothedEpsSchedule


def test_schedule_is_zero_in_warmup_then_ramps_monotonically_to_target():
    schedule = SmoothedEpsSchedule(target_eps=0.3, warmup_steps=10, ramp_steps=100)
    values = np.array([schedule.eps(step) for step in range(150)])
    assert np.all(values[:11] == 0)
    assert np.all(np.diff(values) >= -1e-12)
    assert values[110:].tolist() == [0.3] * 40
    assert 0 < values[40] < 0.3 * 0.3


def test_schedule_joins_power_and_linear_parts_without_a_jump():
    schedule = SmoothedEpsSchedule(target_eps=1.0, warmup_steps=0, ramp_steps=1000)
    steps = np.arange(1, 1000)
    increments = np.diff([schedule.eps(int(step)) for step in steps])
    # Smooth: no increment is much larger than its neighbours (a kink would show as a jump).
    assert np.max(np.abs(np.diff(increments))) < 1e-4
    assert schedule.progress(500) == pytest.approx(schedule.eps(500))


def test_schedule_without_ramp_jumps_to_target_after_warmup():
    schedule = SmoothedEpsSchedule(target_eps=0.1, warmup_steps=5, ramp_steps=0)
    assert schedule.eps(4) == 0.0
    assert schedule.eps(5) == 0.1
    assert schedule.progress(5) == 1.0


def test_config_layers_defaults_then_recipe_then_options(tmp_path):
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text("eps: 0.1\nepochs: 3\nobjective_args: {base: ibp, lam: 0.2}\n")
    config = build_config(load_yaml_mapping(recipe_file), {"epochs": 5, "lr": None, "objective_args": {"lam": 0.7}})
    assert config.eps == 0.1
    assert config.epochs == 5
    assert config.lr == 5e-4
    assert config.objective_args == {"base": "ibp", "lam": 0.7}


@pytest.mark.parametrize(
    "overrides, message",
    [({"eps": 0.0}, "--eps"), ({"eps": 1.5}, "--eps"), ({"epochs": 0}, "positive"), ({"device": "tpu"}, "--device"),
     ({"nonsense": 1}, "unknown options key")],
)
def test_config_rejects_bad_values_with_one_line(overrides, message):
    with pytest.raises(MaarError, match=message) as error:
        build_config(None, overrides)
    assert "\n" not in str(error.value)


def test_yaml_must_be_a_mapping_and_is_never_evaluated(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(MaarError, match="mapping"):
        load_yaml_mapping(bad)
    hostile = tmp_path / "hostile.yaml"
    hostile.write_text("eps: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(MaarError, match="not valid YAML"):
        load_yaml_mapping(hostile)
