"""Personal data is masked in returned text and never reaches a log."""

from __future__ import annotations

import logging

import pytest

from service.redact import install_log_redaction, redact


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
