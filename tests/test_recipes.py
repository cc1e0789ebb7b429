"""Recipes: every shipped recipe builds a valid configuration at each scale, and the layering
defaults <- recipe <- --config <- flags holds, on the command line too."""
import json

import pytest
from click.testing import CliRunner

from maar_plugin.cli import cli
from maar_plugin.errors import MaarError
from maar_plugin.objectives import objective_hyperparameters
from maar_plugin.training.recipe import config_from_recipe, load_recipe, recipe_names


def test_shipped_recipes_cover_both_mnist_settings():
    names = recipe_names()
    assert {"mnist-eps0.1-dm-small", "mnist-eps0.3-dm-small", "mnist-eps0.3-dm-large"} <= set(names)


@pytest.mark.parametrize("name", recipe_names())
def test_each_recipe_builds_at_both_scales_and_cites_its_sources(name):
    full, cpu = load_recipe(name, "full"), load_recipe(name, "cpu")
    assert full.sources and full.description
    full_config = config_from_recipe(full.training)
    cpu_config = config_from_recipe(cpu.training)
    assert name == f"{full.setting}-{full.model}" and full_config.model == full.model
    assert cpu_config.epochs < full_config.epochs
    assert cpu.evaluation.certify_count <= full.evaluation.certify_count
    assert full.evaluation.certify_count >= 1000 and full.evaluation.pgd_steps >= 20
    assert cpu_config.eps == full_config.eps  # a smaller scale, the same question


def test_recipe_hyperparameters_follow_the_objective():
    recipe = load_recipe("mnist-eps0.3-dm-small", "cpu").training
    maar = config_from_recipe(recipe)
    assert maar.objective == "maar" and maar.objective_args["base"] == "crown-ibp"
    ibp = config_from_recipe(recipe, {"objective": "ibp"})
    assert set(ibp.objective_args) <= set(objective_hyperparameters("ibp"))
    pgd = config_from_recipe(recipe, {"objective": "pgd"})
    assert pgd.objective_args == {"steps": 5}
    # later layers override, and are never filtered
    layered = config_from_recipe(recipe, {"epochs": 3, "objective_args": {"lam": 2.0}}, {"epochs": 2})
    assert layered.epochs == 2 and layered.objective_args["lam"] == 2.0 and layered.lr == recipe["lr"]
    with pytest.raises(MaarError):
        config_from_recipe(recipe, {"objective": "ibp", "objective_args": {"lam": 1.0}})


def test_unknown_and_malformed_recipes_are_one_line_errors(tmp_path):
    with pytest.raises(MaarError, match=r"shipped recipes: .*mnist-eps0\.3-dm-small"):
        load_recipe("mnist-eps0.5-dm-small")
    with pytest.raises(MaarError, match="--scale"):
        load_recipe("mnist-eps0.3-dm-small", "tpu")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {epochs: 1}\nschedule: 3\n")
    with pytest.raises(MaarError, match="unknown key"):
        load_recipe(str(bad))
    bad.write_text("training: {epochs: 1, learning_rate: 3}\n")
    with pytest.raises(MaarError, match="learning_rate"):
        load_recipe(str(bad))
    no_scale = tmp_path / "noscale.yaml"
    no_scale.write_text("training: {epochs: 1}\n")
    with pytest.raises(MaarError, match="no 'cpu' scale"):
        load_recipe(str(no_scale), "cpu")


def test_cli_train_with_a_recipe_layers_config_file_and_flags(tmp_path):
    config_file = tmp_path / "over.yaml"
    config_file.write_text("epochs: 5\nlr: 0.002\n")
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "train", "--recipe", "mnist-eps0.1-dm-small", "--scale", "cpu", "--config", str(config_file),
        "--epochs", "1", "--model", "mlp-256x2", "--objective", "ibp", "--train-count", "200", "--eval-count", "20",
        "--device", "cpu", "--no-progress", "--out", str(run_dir)])
    assert result.exit_code == 0, result.output
    saved = json.loads((run_dir / "config.json").read_text())
    recipe = load_recipe("mnist-eps0.1-dm-small", "cpu").training
    assert saved["epochs"] == 1 and saved["lr"] == 0.002  # flag over file over recipe
    assert saved["eps"] == 0.1 and saved["batch_size"] == recipe["batch_size"]  # from the recipe
    assert saved["objective"] == "ibp" and "lam" not in saved["objective_args"]


def test_cli_recipe_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--recipe", "nope", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "unknown recipe" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["train", "--scale", "cpu", "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "--recipe" in result.output
    listing = runner.invoke(cli, ["recipes"])
    assert listing.exit_code == 0 and all(name in listing.output for name in recipe_names())
    shown = runner.invoke(cli, ["recipes", "--show", "mnist-eps0.3-dm-small", "--scale", "cpu"])
    train_count = load_recipe("mnist-eps0.3-dm-small", "cpu").training["train_count"]
    assert shown.exit_code == 0 and "Shi et al. 2021" in shown.output and f"train_count: {train_count}" in shown.output


@pytest.mark.parametrize("name", ["mnist-eps0.1-dm-small", "mnist-eps0.3-dm-small"])
def test_base_args_reach_the_base_and_maar_over_it_at_both_scales(name):
    from maar_plugin.objectives.maar import certified_bases

    for scale in ("full", "cpu"):
        recipe = load_recipe(name, scale)
        assert {"sabr", "mtl-ibp", "exp-ibp", "cc-ibp"} <= set(recipe.base_args) <= set(certified_bases())
        for base, arguments in recipe.base_args.items():
            for layer in ({"objective": base}, {"objective": f"maar-{base}"},
                          {"objective": "maar", "objective_args": {"base": base}}):
                config = config_from_recipe(recipe.training, layer, base_args=recipe.base_args)
                assert {key: config.objective_args[key] for key in arguments} == arguments, (base, layer)
        ibp = config_from_recipe(recipe.training, {"objective": "ibp"}, base_args=recipe.base_args)
        assert ibp.objective_args["kappa_start"] == recipe.training["objective_args"]["kappa_start"]
        flagged = config_from_recipe(recipe.training, {"objective": "maar-sabr", "objective_args": {"shrinkage": 0.7}},
                                     base_args=recipe.base_args)
        assert flagged.objective_args["shrinkage"] == 0.7  # flags over base_args
    full, cpu = load_recipe(name, "full").base_args, load_recipe(name, "cpu").base_args
    assert cpu["sabr"]["attack_restarts"] < full["sabr"]["attack_restarts"]
    assert cpu["sabr"]["shrinkage"] == full["sabr"]["shrinkage"]  # a cheaper attack, the same question


def test_bad_base_args_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {epochs: 1}\nbase_args: {sabr: {shrinkag: 0.4}}\n")
    with pytest.raises(MaarError, match="base_args of 'sabr' has no hyperparameter"):
        load_recipe(str(bad))
    bad.write_text("training: {epochs: 1}\nbase_args: {sabre: {shrinkage: 0.4}}\n")
    with pytest.raises(MaarError, match="unknown objective 'sabre'"):
        load_recipe(str(bad))
