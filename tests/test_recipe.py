"""Recipe schema, errors, overrides, base merge and ablation expansion."""
import textwrap

import pytest
from lmzoo.plugins.devtools.catalog import json_schema

import lmzoo
from lmzoo.recipe import RecipeError, deep_merge, load_runs, parse_override, to_yaml


def recipe(tmp_path, text, name="r.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def errors_of(path, overrides=()):
    with pytest.raises(RecipeError) as info:
        load_runs(path, overrides)
    return info.value.errors


def test_defaults_are_visible(tmp_path):
    r = lmzoo.load_recipe(recipe(tmp_path, "name: t\n"))
    dumped = to_yaml(r)
    # every default is spelled out: component params too
    assert r.model.position.name == "rope" and "theta" in r.model.position.model_fields_set | set(
        type(r.model.position).model_fields)
    assert "theta:" in dumped and "precision:" in dumped and "warmup_steps:" in dumped


def test_unknown_component_name_suggests_closest_one_error(tmp_path):
    errs = errors_of(recipe(tmp_path, "model:\n  position: {name: alibii}\n"))
    assert len(errs) == 1, errs
    assert errs[0].startswith("model.position.name: unknown position 'alibii' (did you mean 'alibi'")


def test_bad_param_value_gives_yaml_path_and_value(tmp_path):
    errs = errors_of(recipe(tmp_path, "model:\n  position: {name: rope, theta: hot}\n"))
    assert len(errs) == 1, errs
    assert errs[0].startswith("model.position.theta:") and "'hot'" in errs[0]


def test_unknown_key_did_you_mean(tmp_path):
    errs = errors_of(recipe(tmp_path, "model:\n  position: {name: rope, thetaa: 5}\n"))
    assert errs == [e for e in errs if e.startswith("model.position.thetaa: unknown key 'thetaa' (did you mean 'theta'")]
    assert len(errs) == 1
    errs = errors_of(recipe(tmp_path, "model:\n  d_modle: 64\n"))
    assert len(errs) == 1 and "model.d_modle: unknown key" in errs[0] and "'d_model'" in errs[0]
    errs = errors_of(recipe(tmp_path, "trian: {}\n"))
    assert len(errs) == 1 and "did you mean 'train'" in errs[0]


def test_missing_component_name(tmp_path):
    # params without a name refine the default component...
    r = lmzoo.load_recipe(recipe(tmp_path, "model:\n  norm: {eps: 1.0e-6}\n"))
    assert r.model.norm.name == "rmsnorm" and r.model.norm.eps == 1e-6
    # ...but a list entry has no default to refine
    errs = errors_of(recipe(tmp_path, "data:\n  filters: [{min_words: 3}]\n", "r2.yaml"))
    assert len(errs) == 1 and errs[0].startswith("data.filters[0].name: missing 'name'"), errs


def test_constraint_violation(tmp_path):
    errs = errors_of(recipe(tmp_path, "model:\n  n_layers: 0\n"))
    assert len(errs) == 1 and errs[0].startswith("model.n_layers:") and "(got 0)" in errs[0]
    errs = errors_of(recipe(tmp_path, "model: {d_model: 100, n_heads: 3}\n"))
    assert len(errs) == 1 and "divisible by n_heads=3" in errs[0]
    errs = errors_of(recipe(tmp_path, "train:\n  budget: {steps: 10, tokens: 100}\n"))
    assert len(errs) == 1 and errs[0].startswith("train.budget:") and "exactly one" in errs[0]


def test_errors_in_a_list_of_components(tmp_path):
    errs = errors_of(recipe(tmp_path, "data:\n  filters: [{name: nosuchfilter}]\n"))
    assert len(errs) == 1 and errs[0].startswith("data.filters[0].name: unknown data_filter 'nosuchfilter'")


def test_yaml_syntax_error_has_line(tmp_path):
    errs = errors_of(recipe(tmp_path, "model:\n  d_model: [64\n"))
    assert "YAML syntax error at line" in errs[0]


def test_yaml_loader_is_safe(tmp_path):
    errs = errors_of(recipe(tmp_path, "model: !!python/object/apply:os.system ['echo hi']\n"))
    assert "YAML syntax error" in errs[0]


def test_overrides_are_typed_by_the_schema(tmp_path):
    p = recipe(tmp_path, "model: {d_model: 64}\n")
    r = lmzoo.load_recipe(p, ["model.d_model=96", "train.optimizer.lr=3e-4", "model.tie_embeddings=true"])
    assert r.model.d_model == 96 and isinstance(r.model.d_model, int)
    assert r.train.optimizer.lr == pytest.approx(3e-4)
    assert r.model.tie_embeddings is True
    errs = errors_of(p, ["model.d_model=wide"])
    assert len(errs) == 1 and errs[0].startswith("model.d_model:") and "'wide'" in errs[0]
    with pytest.raises(RecipeError, match="key.path=value"):
        parse_override("model.d_model")


def test_swapping_a_component_replaces_its_params(tmp_path):
    p = recipe(tmp_path, "model:\n  position: {name: rope, theta: 500}\n")
    r = lmzoo.load_recipe(p, ["model.position=alibi"])
    assert r.model.position.name == "alibi"
    r = lmzoo.load_recipe(p, ["model.position.name=alibi"])
    assert r.model.position.name == "alibi"
    r = lmzoo.load_recipe(p, ["model.position.theta=900"])
    assert r.model.position.theta == 900


def test_base_deep_merge(tmp_path):
    recipe(tmp_path, """
        name: parent
        model: {d_model: 64, n_layers: 2, position: {name: rope, theta: 500}}
        train: {batch_size: 8}
        """, "parent.yaml")
    child = recipe(tmp_path, """
        base: parent.yaml
        name: child
        model: {n_layers: 3, position: {name: alibi}}
        """, "child.yaml")
    r = lmzoo.load_recipe(child)
    assert (r.name, r.model.d_model, r.model.n_layers, r.train.batch_size) == ("child", 64, 3, 8)
    assert r.model.position.name == "alibi"  # theta from the parent's rope did not leak in
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}}


def test_missing_base_and_cycle(tmp_path):
    p = recipe(tmp_path, "base: nowhere.yaml\n")
    assert "nowhere.yaml" in errors_of(p)[0]
    recipe(tmp_path, "base: b.yaml\n", "a.yaml")
    recipe(tmp_path, "base: a.yaml\n", "b.yaml")
    assert "cycle" in errors_of(tmp_path / "a.yaml")[0]


def test_variants_grid_and_seeds(tmp_path):
    p = recipe(tmp_path, """
        model: {d_model: 32, n_heads: 2}
        ablation:
          variants:
            rope: {}
            alibi: {model.position: {name: alibi}}
          grid: {model.n_layers: [1, 2]}
          seeds: [0, 1]
        """)
    base, runs = load_runs(p)
    assert len(runs) == 2 * 2 * 2
    labels = {(r.variant, r.seed) for r in runs}
    assert ("alibi,n_layers=2", 1) in labels and ("rope,n_layers=1", 0) in labels
    for r in runs:
        assert r.recipe.variant == r.variant and r.recipe.seed == r.seed
        assert r.recipe.model.position.name == r.variant.split(",")[0]
        # shared budget and data
        assert r.recipe.train.budget == base.train.budget and r.recipe.data == base.data


def test_variant_errors_name_the_variant(tmp_path):
    p = recipe(tmp_path, """
        ablation:
          variants:
            good: {}
            bad: {model.position: {name: alibi, max_biass: 3}}
        """)
    errs = errors_of(p)
    assert len(errs) == 1 and errs[0].startswith("[variant bad] model.position.max_biass: unknown key")


def test_unfair_variant_is_refused(tmp_path):
    p = recipe(tmp_path, """
        ablation:
          variants:
            a: {}
            b: {train.budget.steps: 999}
        """)
    errs = errors_of(p)
    assert "may not change train.budget" in errs[0]
    p2 = recipe(tmp_path, """
        ablation:
          fair: false
          variants:
            a: {}
            b: {train.budget: {steps: 999}}
        """, "r2.yaml")
    assert load_runs(p2)[1][1].recipe.train.budget.steps == 999


def test_quick_overrides(tmp_path):
    p = recipe(tmp_path, "train: {budget: {steps: 1000}}\nquick: {train.budget.steps: 5}\n")
    assert load_runs(p, quick=True)[0].train.budget.steps == 5
    assert load_runs(p)[0].train.budget.steps == 1000


def test_plugin_file_in_recipe_validates(tmp_path, fresh_plugins):
    (tmp_path / "myffn.py").write_text(textwrap.dedent('''
        import torch
        from torch import nn
        from pydantic import BaseModel, ConfigDict, Field
        import lmzoo

        class P(BaseModel):
            model_config = ConfigDict(extra="forbid")
            gain: float = Field(1.0, gt=0, description="output scale")

        class Scaled(nn.Module):
            """w2(relu(w1 x)) * gain"""
            def __init__(self, d_model, d_ff, gain=1.0):
                super().__init__()
                self.w1 = nn.Linear(d_model, d_ff, bias=False)
                self.w2 = nn.Linear(d_ff, d_model, bias=False)
                self.gain = gain
            def forward(self, x):
                return self.w2(torch.relu(self.w1(x))) * self.gain

        @lmzoo.hookimpl
        def lmzoo_register(registry):
            registry.add("ffn", "scaled-mlp", factory=Scaled, params=P)
        '''))
    p = recipe(tmp_path, "plugins: [./myffn.py]\nmodel:\n  ffn: {name: scaled-mlp, gain: 2.0}\n")
    r = lmzoo.load_recipe(p)
    assert r.model.ffn.name == "scaled-mlp" and r.model.ffn.gain == 2.0
    errs = errors_of(recipe(tmp_path, "plugins: [./nothere.py]\n", "r3.yaml"))
    assert "nothere.py" in errs[0] and "not found" in errs[0]


def test_json_schema_lists_components():
    schema = json_schema()
    text = str(schema)
    assert "alibi" in text and "rope" in text and schema["title"] == "lmzoo recipe"


def test_budget_kinds_replace_each_other(tmp_path):
    recipe(tmp_path, "train: {budget: {steps: 100}}\n", "parent.yaml")
    child = recipe(tmp_path, "base: parent.yaml\ntrain: {budget: {tokens: 5000}}\n", "child.yaml")
    b = lmzoo.load_recipe(child).train.budget
    assert (b.steps, b.tokens) == (None, 5000)
    b = lmzoo.load_recipe(child, ["train.budget.flops=1e12"]).train.budget
    assert (b.tokens, b.flops) == (None, 1e12)


def test_a_components_own_defaults_win(tmp_path):
    """`{name: lion}` gets Lion's lr (1e-4), not the optimizer field's generic default; a bare name on
    the command line swaps in a component the recipe file never mentioned."""
    p = recipe(tmp_path, "train: {optimizer: {name: lion}}\n")
    assert lmzoo.load_recipe(p).train.optimizer.lr == 1e-4
    plain = recipe(tmp_path, "name: plain\n", "plain.yaml")
    r = lmzoo.load_recipe(plain, ["train.optimizer=lion"])
    assert r.train.optimizer.name == "lion" and r.train.optimizer.lr == 1e-4
    assert lmzoo.load_recipe(plain, ["train.optimizer.lr=0.5"]).train.optimizer.name == "adamw"
