"""Cost models price tokens per model role and say what they are."""

import pytest

from escalate.evaluation.cost import COST_MODELS, CostModel, FlopsCost, TokenPriceCost

PRICES = {"slm": (0.05, 0.1), "llm": (1.0, 2.0)}


def test_token_price_cost_prices_prompt_and_output_separately():
    model = TokenPriceCost(PRICES)
    assert model.cost("slm", 100, 10) == pytest.approx(0.05 * 100 + 0.1 * 10)
    assert model.cost("llm", 100, 10) == pytest.approx(120.0)
    assert model.cost("llm", 0, 0) == 0.0


def test_flops_cost_is_two_params_per_token():
    model = FlopsCost({"slm": 500_000_000, "llm": 7_000_000_000})
    assert model.cost("slm", 3, 2) == 2 * 500_000_000 * 5
    assert model.cost("llm", 1, 0) == 14e9


@pytest.mark.parametrize("model", [TokenPriceCost(PRICES), FlopsCost({"slm": 1, "llm": 20})])
def test_unknown_role_names_the_known_ones(model):
    with pytest.raises(KeyError, match="'mlm'.*llm, slm"):
        model.cost("mlm", 1, 1)


def test_negative_token_counts_are_rejected():
    with pytest.raises(ValueError, match="token counts"):
        TokenPriceCost(PRICES).cost("slm", -1, 0)


@pytest.mark.parametrize(
    "build",
    [
        lambda: TokenPriceCost({}),
        lambda: TokenPriceCost({"slm": (-0.1, 0.1)}),
        lambda: TokenPriceCost({"slm": (0.1,)}),
        lambda: FlopsCost({"slm": 0}),
    ],
)
def test_bad_configuration_fails_at_construction(build):
    with pytest.raises(ValueError):
        build()


def test_describe_names_the_model_and_its_numbers():
    assert (
        TokenPriceCost(PRICES).describe() == "token prices per token (prompt/output): llm 1/2, slm 0.05/0.1"
    )
    assert FlopsCost({"slm": 500_000_000, "llm": 7_000_000_000}).describe() == (
        "FLOPs = 2 · parameters · tokens (parameters: llm 7B, slm 500M)"
    )


def test_registry_builds_each_cost_model_by_name():
    assert set(COST_MODELS) == {"token_price", "flops"}
    assert isinstance(COST_MODELS["token_price"](prices=PRICES), CostModel)
    assert COST_MODELS["flops"](params={"slm": 10}).cost("slm", 1, 1) == 40.0
