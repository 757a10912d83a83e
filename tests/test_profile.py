"""The venue profiles: what ships, and how a bad profile file is refused."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from exchange.profile import available_profiles, load_profile
from exchange.validation import InputError

D = Decimal
SHIPPED = Path(__file__).resolve().parent.parent / "exchange" / "profiles" / "backpack.toml"


def test_shipped_profiles():
    assert available_profiles() == ["backpack", "backpack-2025-10"]
    backpack = load_profile("backpack")
    later = load_profile("backpack-2025-10")
    assert backpack.liquidation.fee_rate == 0
    assert later.liquidation.fee_rate == D("0.01")
    # Everything else is the same venue.
    assert later.markets == backpack.markets and later.assets == backpack.assets
    required_assets = {"USDC", "USDT", "BTC", "ETH", "SOL"}
    required_markets = {
        "BTC_USDC", "ETH_USDC", "SOL_USDC", "USDT_USDC", "BTC_USDC_PERP", "ETH_USDC_PERP", "SOL_USDC_PERP",
    }
    assert required_assets <= set(backpack.assets) and required_markets <= set(backpack.markets)


def test_live_parameters_from_the_spec():
    """Spec section 4 (F1) and the BTC market sample of S20; tier-1 fees (F13)."""
    p = load_profile("backpack")
    btc = p.markets["BTC_USDC_PERP"]
    assert (btc.imf.base, btc.imf.factor, btc.mmf.base, btc.mmf.factor) == (
        D("0.01333333"), D("0.00002494"), D("0.00666667"), D("0.00001496"),
    )
    assert (btc.tick_size, btc.step_size, btc.funding_interval_ms) == (D("0.1"), D("0.00001"), 3_600_000)
    assert (btc.funding_lower_bound_bps, btc.funding_upper_bound_bps, btc.open_interest_limit) == (
        D(-100), D(100), D(4000),
    )
    sol, eth = p.markets["SOL_USDC_PERP"], p.markets["ETH_USDC_PERP"]
    assert (sol.imf.base, sol.imf.factor, sol.mmf.base, sol.mmf.factor) == (
        D("0.02"), D("0.0001275"), D("0.0125"), D("0.0000765"),
    )
    assert (eth.imf.base, eth.imf.factor, eth.mmf.base, eth.mmf.factor) == (
        D("0.02"), D("0.0000935"), D("0.0125"), D("0.0000561"),
    )
    assert (btc.maker_fee, btc.taker_fee) == (D("0.0002"), D("0.0005"))
    assert (p.markets["SOL_USDC"].maker_fee, p.markets["SOL_USDC"].taker_fee) == (D("0.0008"), D("0.001"))
    assert p.markets["USDT_USDC"].taker_fee == 0
    assert p.assets["USDC"].haircut.weight_at(D(10**9)) == 1


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "venue.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _broken(tmp_path: Path, old: str, new: str) -> Path:
    text = SHIPPED.read_text(encoding="utf-8")
    assert old in text
    return _write(tmp_path, text.replace(old, new, 1))


def test_a_profile_file_can_be_loaded_by_path(tmp_path):
    path = _broken(tmp_path, 'name = "backpack"', 'name = "my-venue"')
    assert load_profile(str(path)).name == "my-venue"


@pytest.mark.parametrize(
    "old, new, field, allowed",
    [
        ("tick_size = 0.1\n", "tick_size = -0.1\n", "markets.BTC_USDC.tick_size", "a decimal number > 0"),
        ("tick_size = 0.1\n", "", "markets.BTC_USDC.tick_size", "this field is required"),
        ('kind = "PERP"', 'kind = "FUTURE"', "markets.BTC_USDC_PERP.kind", "one of `SPOT`, `PERP`"),
        ("fee_rate = 0 ", "fee_rate = 1.5 ", "liquidation.fee_rate", "<= 1"),
        ("funding_interval = 3600", "funding_intervall = 3600", "markets.BTC_USDC_PERP.funding_interval", "required"),
        ('base = "BTC"', 'base = "XBT"', "markets.BTC_USDC.base", "one of `USDC`"),
        ('kind = "identity" }', 'kind = "linear" }', "assets.USDC.haircut.kind", "`identity`, `inverseSqrt`"),
        ("max_leverage_limit = 50", "max_leverage_limit = 5", "max_leverage_limit", ">= 10"),
    ],
)
def test_a_bad_profile_names_file_field_and_what_is_allowed(tmp_path, old, new, field, allowed):
    path = _broken(tmp_path, old, new)
    with pytest.raises(InputError) as info:
        load_profile(str(path))
    err = info.value
    assert err.source == str(path)
    assert err.field == field
    assert allowed in str(err)


def test_unknown_field_suggests_the_known_one(tmp_path):
    path = _broken(tmp_path, "funding_interval = 3600", "funding_intervall = 3600")
    with pytest.raises(InputError, match="found `funding_intervall` instead: did you mean `funding_interval`"):
        load_profile(str(path))
    # An extra key next to a complete table is refused with the known fields listed.
    extra = _broken(tmp_path, "funding_interval = 3600", "funding_interval = 3600\nfundng_interval = 60")
    with pytest.raises(InputError, match="did you mean `funding_interval`") as info:
        load_profile(str(extra))
    assert info.value.field == "markets.BTC_USDC_PERP.fundng_interval"


def test_perp_only_fields_are_refused_on_spot(tmp_path):
    path = _broken(tmp_path, "min_quantity = 0.00001\n\n[markets.ETH_USDC]", "min_quantity = 0.00001\nfunding_interval = 60\n\n[markets.ETH_USDC]")
    with pytest.raises(InputError) as info:
        load_profile(str(path))
    assert info.value.field == "markets.BTC_USDC.funding_interval"


def test_invalid_toml_and_unknown_names(tmp_path):
    with pytest.raises(InputError, match="valid TOML"):
        load_profile(str(_write(tmp_path, "name = \n")))
    with pytest.raises(InputError, match="backpack-2025-10"):
        load_profile("bakpack")


def test_overrides_are_validated_like_the_file():
    assert load_profile("backpack", {"liquidation": {"fee_rate": D("0.02")}}).liquidation.fee_rate == D("0.02")
    with pytest.raises(InputError) as info:
        load_profile("backpack", {"liquidation": {"fee_rate": D("-1")}})
    assert info.value.field == "liquidation.fee_rate"
