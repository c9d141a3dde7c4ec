"""Personal data is masked in returned text and never reaches a log."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from service.redact import _luhn_ok, contains_personal_data, install_log_redaction, redact


@pytest.mark.parametrize(
    ("text", "secret", "mask"),
    [
        ("我的手機是0912-345-678請回電", "0912-345-678", "[PHONE]"),
        ("手机13812345678", "13812345678", "[PHONE]"),
        ("打+86 138 1234 5678找我", "138 1234 5678", "[PHONE]"),
        ("香港電話 9123 4567", "9123 4567", "[PHONE]"),
        ("市話(02)2345-6789", "2345-6789", "[PHONE]"),
        ("身分證A123456789", "A123456789", "[ID]"),
        ("身份证号110101199003071234", "110101199003071234", "[ID]"),
        ("HKID A123456(7)", "A123456", "[ID]"),
        ("email me: wang.xiao@example.com.tw", "wang.xiao@example.com.tw", "[EMAIL]"),
        ("卡號 4111 1111 1111 1111 被盜刷", "4111 1111 1111 1111", "[CARD]"),
    ],
)
def test_redact_masks_personal_data(text: str, secret: str, mask: str) -> None:
    out = redact(text)
    assert secret not in out
    assert mask in out


@pytest.mark.parametrize(
    "text", ["訂單編號 12345678 還沒出貨", "订单号 2023112312345678", "7號還要算錢", "退了 350 元"]
)
def test_redact_keeps_order_numbers_and_amounts(text: str) -> None:
    assert redact(text) == text


def test_redact_log_records_mask_formatted_message(caplog: pytest.LogCaptureFixture) -> None:
    install_log_redaction()
    logger = logging.getLogger("test.redact")
    with caplog.at_level(logging.INFO, logger="test.redact"):
        logger.info("customer said %s", "電話0912345678 卡4111111111111111")
    assert "0912345678" not in caplog.text and "4111111111111111" not in caplog.text
    assert "[PHONE]" in caplog.text and "[CARD]" in caplog.text


def test_redact_record_factory_keeps_uvicorn_access_format(capsys: pytest.CaptureFixture[str]) -> None:
    from uvicorn.logging import AccessFormatter

    install_log_redaction()
    logger = logging.getLogger("test.access")
    handler = logging.StreamHandler()
    handler.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False))
    logger.addHandler(handler)
    logger.propagate = False
    logger.warning('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/v1/x?phone=0912345678", "1.1", 200)
    err = capsys.readouterr().err
    assert "GET /v1/x?phone=[PHONE] HTTP/1.1" in err and "200" in err
    assert "0912345678" not in err and "Logging error" not in err


# ------------------------------------------------------------------ the regional formats, one by one
REGIONAL = [
    # Taiwan
    ("tw national ID", "身分證字號A123456789，謝謝", "A123456789", "[ID]"),
    ("tw national ID, female", "我的身分證是F234567890", "F234567890", "[ID]"),
    ("tw resident certificate, new format", "居留證號碼A800000014", "A800000014", "[ID]"),
    ("tw resident certificate, old format", "舊居留證 FA12345678 還能用嗎", "FA12345678", "[ID]"),
    ("tw mobile", "手機0912345678", "0912345678", "[PHONE]"),
    ("tw mobile, dashes", "手機 0912-345-678", "0912-345-678", "[PHONE]"),
    ("tw mobile, +886", "打 +886 912 345 678 給我", "912 345 678", "[PHONE]"),
    ("tw mobile, +886 no spaces", "+886912345678", "912345678", "[PHONE]"),
    ("tw landline", "市話(02)2345-6789", "2345-6789", "[PHONE]"),
    ("tw landline, Taichung", "電話04-2345-6789", "2345-6789", "[PHONE]"),
    ("tw landline, +886", "+886-2-2345-6789找王先生", "2345-6789", "[PHONE]"),
    # mainland
    ("cn resident ID", "身份证号110101199003071234", "110101199003071234", "[ID]"),
    ("cn resident ID, X", "身份证44052419800101001X，帮我查", "44052419800101001X", "[ID]"),
    ("cn resident ID, x", "证件号码 44052420051231002x", "44052420051231002x", "[ID]"),
    ("cn mobile", "手机13812345678", "13812345678", "[PHONE]"),
    ("cn mobile, spaced", "联系 138 1234 5678", "138 1234 5678", "[PHONE]"),
    ("cn mobile, +86", "打+86 138 1234 5678找我", "138 1234 5678", "[PHONE]"),
    ("cn mobile, +86 dashes", "+86-199-8765-4321", "199-8765-4321", "[PHONE]"),
    ("cn landline, Beijing", "座机010-12345678", "12345678", "[PHONE]"),
    ("cn landline, Shenzhen", "电话0755-87654321转客服", "87654321", "[PHONE]"),
    # Hong Kong
    ("hk identity card", "HKID A123456(7)", "A123456", "[ID]"),
    ("hk identity card, two letters", "身份證 AB987654(3) 已遞交", "AB987654", "[ID]"),
    ("hk identity card, check A", "身份證號碼Z683365(A)", "Z683365", "[ID]"),
    ("hk identity card, full-width brackets", "身份證C668668（9）", "C668668", "[ID]"),
    ("hk mobile", "香港電話 9123 4567", "9123 4567", "[PHONE]"),
    ("hk mobile, +852", "WhatsApp +852 6123 4567 唔該", "6123 4567", "[PHONE]"),
    ("hk landline", "打去 2345 6789 搵我", "2345 6789", "[PHONE]"),
    ("hk mobile, joined", "+85251234567", "51234567", "[PHONE]"),
    # anywhere
    ("email", "寄到 wang.xiao@example.com.tw 謝謝", "wang.xiao@example.com.tw", "[EMAIL]"),
    ("card", "卡號4111-1111-1111-1111被盜刷", "4111-1111-1111-1111", "[CARD]"),
]


@pytest.mark.parametrize(("name", "text", "secret", "mask"), REGIONAL, ids=[r[0] for r in REGIONAL])
def test_redact_regional_formats(name: str, text: str, secret: str, mask: str) -> None:
    out = redact(text)
    assert secret not in out and mask in out, out
    assert not contains_personal_data(out) and redact(out) == out


@pytest.mark.parametrize(("name", "text", "secret", "mask"), REGIONAL, ids=[r[0] for r in REGIONAL])
def test_redact_api_and_logs_share_one_redactor(
    name: str, text: str, secret: str, mask: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``redact=true`` answers (service.analyzer) and log lines are masked by the same function."""
    import service.analyzer
    import service.qa.rows

    assert service.analyzer.mask is redact and service.qa.rows.redact is redact
    install_log_redaction()
    with caplog.at_level(logging.INFO, logger="test.shared"):
        logging.getLogger("test.shared").info("%s", text)
    assert caplog.records[-1].getMessage() == redact(text)
    assert secret not in caplog.text


def test_redact_through_the_analyzer(tiny_analyzer) -> None:  # type: ignore[no-untyped-def]
    texts = [text for _, text, _, _ in REGIONAL]
    for r, text in zip(tiny_analyzer.analyze(texts, redact=True), texts, strict=True):
        assert r.text == redact(text)


# ------------------------------------------------------------------ properties (hypothesis)
def _digits(n: int) -> st.SearchStrategy[str]:
    return st.text("0123456789", min_size=n, max_size=n)


def _luhn_complete(body: str) -> str:
    for check in "0123456789":
        if _luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable")


def _group(digits: str, sizes: tuple[int, ...], sep: str) -> str:
    out, i = [], 0
    for n in sizes:
        out.append(digits[i : i + n])
        i += n
    return sep.join(out)


SEP = st.sampled_from(["", " ", "-"])
LETTER = st.sampled_from("ABCDEFGHJKLMNPQRSTUVXYWZIO")

tw_mobile = st.builds(
    lambda d, s, intl: ("+886 " if intl else "0") + _group("9" + d, (3, 3, 3), s), _digits(8), SEP, st.booleans()
)
tw_landline = st.builds(lambda a, d, s: f"(0{a}){_group(d, (4, 4), s)}", st.sampled_from("2345678"), _digits(8), SEP)
tw_id = st.builds(lambda letter, g, d: letter + g + d, LETTER, st.sampled_from("1289"), _digits(8))
tw_arc_old = st.builds(lambda letter, g, d: letter + g + d, LETTER, st.sampled_from("ABCD"), _digits(8))
cn_mobile = st.builds(
    lambda p, d, s, intl: ("+86 " if intl else "") + _group("1" + p + d, (3, 4, 4), s),
    st.sampled_from("3456789"),
    _digits(9),
    SEP,
    st.booleans(),
)
cn_landline = st.builds(
    lambda area, d: f"{area}-{d}", st.sampled_from(["010", "020", "021", "0755", "0571"]), _digits(8)
)
cn_id = st.builds(
    lambda region, y, m, day, seq, check: f"{region}{y}{m:02d}{day:02d}{seq}{check}",
    st.builds(lambda first, rest: first + rest, st.sampled_from("123456789"), _digits(5)),
    st.integers(1930, 2024),
    st.integers(1, 12),
    st.integers(1, 28),
    _digits(3),
    st.sampled_from("0123456789X"),
)
hk_id = st.builds(
    lambda letters, d, check: f"{letters}{d}({check})",
    st.text("ABCDEFGHKMPRZ", min_size=1, max_size=2),
    _digits(6),
    st.sampled_from("0123456789A"),
)
hk_phone = st.builds(
    lambda first, d, s, intl: ("+852 " if intl else "") + _group(first + d, (4, 4), s),
    st.sampled_from("235689"),
    _digits(7),
    st.sampled_from(["", " "]),
    st.booleans(),
)
card = st.builds(lambda d, s: _group(_luhn_complete("4" + d), (4, 4, 4, 4), s), _digits(14), SEP)
email = st.builds(
    lambda user, host, tld: f"{user}@{host}.{tld}",
    st.text("abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1, max_size=12).filter(lambda u: u[0].isalnum()),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=10),
    st.sampled_from(["com", "tw", "hk", "cn", "com.tw", "net"]),
)
PERSONAL = st.one_of(
    tw_mobile, tw_landline, tw_id, tw_arc_old, cn_mobile, cn_landline, cn_id, hk_id, hk_phone, card, email
)
#: What may stand right next to personal data in a chat: CJK text and punctuation (no digit, letter or separator
#: that would make the number part of a longer one).
BOUNDARY = st.sampled_from([*"，。：「」！？、的我電話號碼身分證手機卡", "\n", "\t"])
FILLER = st.text(st.characters(categories=["L", "M", "N", "P", "S", "Z"]), max_size=20)


@st.composite
def chat_with_personal_data(draw: st.DrawFn) -> tuple[str, list[str]]:
    parts, secrets = [draw(FILLER)], []
    for _ in range(draw(st.integers(1, 4))):
        secret = draw(PERSONAL)
        secrets.append(secret)
        parts += [draw(BOUNDARY), secret, draw(BOUNDARY), draw(FILLER)]
    return "".join(parts), secrets


PROPERTY = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@seed(20261124)
@PROPERTY
@given(chat_with_personal_data())
def test_redact_never_leaves_generated_personal_data(sample: tuple[str, list[str]]) -> None:
    text, secrets = sample
    out = redact(text)
    for secret in secrets:
        assert secret not in out, (secret, out)
    assert not contains_personal_data(out)
    assert redact(out) == out


@seed(20261124)
@PROPERTY
@given(st.text(st.characters(categories=["L", "M", "N", "P", "S", "Z", "C"]), max_size=400))
def test_redact_any_text_no_crash_idempotent_nothing_left(text: str) -> None:
    out = redact(text)
    assert redact(out) == out
    assert not contains_personal_data(out)


@seed(20261124)
@PROPERTY
@given(st.text("0123456789 -+()@.abcXA（）", max_size=200))
def test_redact_digit_soup_idempotent(text: str) -> None:
    out = redact(text)
    assert redact(out) == out and not contains_personal_data(out)


@pytest.mark.parametrize(
    "text", ["a" * 100_000, "a@" * 50_000, "1 " * 50_000, "x@" + "a." * 50_000, "A123456 " * 12_000]
)
def test_redact_is_linear_on_long_adversarial_text(text: str) -> None:
    import time

    started = time.perf_counter()
    redact(text)
    assert time.perf_counter() - started < 2.0
