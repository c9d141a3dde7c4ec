"""What ``make soak`` sends: customer messages with personal data in them, and hostile bodies.

Shared by the load generator (``bench/locustfile.py``) and the driver (``bench/soak.py``, which greps
the server's log for every personal value sent). Plain data and the standard library only: the
driver must not import locust (gevent patches the process).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "messages.jsonl"

#: Personal data in the formats the redactor knows, as customers type it. The server must never log
#: any of these raw (they are sent in texts, in query strings and as request ids).
PERSONAL = {
    "tw_mobile": ["0912345678", "0933-456-789", "+886 955 123 456"],
    "tw_id": ["A123456789", "F234567890", "FA12345678"],
    "tw_landline": ["(02)2345-6789"],
    "cn_mobile": ["13812345678", "+86 139 8765 4321", "186-1234-5678"],
    "cn_id": ["110101199003071234", "44052419800101001X"],
    "cn_landline": ["0755-87654321"],
    "hk_id": ["A123456(7)", "AB987654(3)"],
    "hk_phone": ["9123 4567", "+852 6123 4567"],
    "card": ["4111 1111 1111 1111", "5500-0000-0000-0004"],
    "email": ["wang.xiaoming@example.com.tw", "chan.taiman@mail.example.hk"],
}


#: The raw strings to look for in the log (with and without separators, as a careless logger might print them).
def leak_needles() -> list[str]:
    needles = set()
    for values in PERSONAL.values():
        for v in values:
            needles.add(v)
            digits = "".join(ch for ch in v if ch.isalnum())
            if len(digits) >= 8:
                needles.add(digits)
    return sorted(needles)


TEMPLATES = [
    "我的電話是{pii}，你們到底什麼時候退款？",
    "請回電{pii}，帳單多扣了三百塊!",
    "身分證{pii}已經給過了，為什麼還要再填一次",
    "我的手机号{pii}，快递三天了还没到，太离谱了",
    "联系邮箱 {pii}，发票一直没收到",
    "卡號{pii}被盜刷了，馬上幫我處理！",
    "唔該打俾我 {pii}，張單計錯數",
]

AGENT_TURNS = [
    "非常抱歉造成您的困擾，謝謝您告訴我們，我馬上幫您查這筆費用。",
    "您是說帳單多扣了三百元，對嗎？我現在幫您處理，15分鐘內回電給您。",
    "这不是我们的问题，系统显示您已经签收了。",
    "我可以幫您退款或換貨，您比較希望哪一種？",
    "已經幫您辦好了，這樣處理您可以接受嗎？",
]


class Messages:
    """Customer texts: the test fixtures' messages, and templates carrying personal data (30%)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self.plain = [json.loads(line)["text"] for line in FIXTURES.read_text(encoding="utf-8").splitlines()]
        self.pii = [v for values in PERSONAL.values() for v in values]

    def text(self) -> str:
        if self.rng.random() < 0.3:
            return self.rng.choice(TEMPLATES).format(pii=self.rng.choice(self.pii))
        return self.rng.choice(self.plain)

    def personal_value(self) -> str:
        return self.rng.choice(self.pii)


def _deep(n: int) -> bytes:
    return b'{"text": "hi", "lang": ' + b"[" * n + b"]" * n + b"}"


#: (name, path, body, content type, the statuses that are right). Each is a request a broken or hostile
#: client sends; the right answer is a 4xx, fast, and the server carrying on.
JSON = "application/json"
HOSTILE: list[tuple[str, str, bytes, str, set[int]]] = [
    ("lone surrogate", "/v1/analyze", b'{"text": "\\ud800abc 0912345678"}', JSON, {422}),
    ("lone surrogate id", "/v1/analyze/batch", b'{"items": [{"id": "\\udc00", "text": "hi"}]}', JSON, {422}),
    ("invalid UTF-8", "/v1/analyze", b'{"text": "\xff\xfe A123456789"}', JSON, {422}),
    ("NUL", "/v1/analyze", b'{"text": "abc\\u0000 13812345678"}', JSON, {422}),
    (
        "escape codes",
        "/v1/conversations/analyze",
        b'{"turns": [{"role": "customer", "text": "\\u001b[31m"}]}',
        JSON,
        {422},
    ),
    ("deep nesting", "/v1/analyze", _deep(20_000), JSON, {422}),
    ("huge number", "/v1/analyze/batch", b'{"items": [{"id": ' + b"9" * 5000 + b', "text": "a"}]}', JSON, {422}),
    ("NaN ts", "/v1/conversations/analyze", b'{"turns": [{"role": "customer", "text": "a", "ts": NaN}]}', JSON, {422}),
    ("wrong content type", "/v1/analyze", b"text=hi", "application/x-www-form-urlencoded", {415}),
    ("text/plain", "/v1/analyze", "我的電話0912345678".encode(), "text/plain", {415}),
    ("not JSON", "/v1/analyze", b"{text: 'hi'", JSON, {422}),
    ("unknown field", "/v1/analyze", b'{"text": "hi", "phone": "0912345678"}', JSON, {422}),
    ("bad lang", "/v1/analyze", b'{"text": "hi", "lang": "fr"}', JSON, {422}),
    ("no customer turn", "/v1/conversations/analyze", b'{"turns": [{"role": "agent", "text": "hi"}]}', JSON, {422}),
    (
        "20,000 turns",
        "/v1/conversations/analyze",
        json.dumps({"turns": [{"role": "customer", "text": "你好"}] * 20_000}).encode(),
        JSON,
        {422},
    ),
    (
        "100,000 items",
        "/v1/analyze/batch",
        json.dumps({"items": [{"text": "a"}] * 100_000}).encode(),
        JSON,
        {413},
    ),
    ("1.5 MB body", "/v1/analyze", b'{"text": "' + b"x" * 1_500_000 + b'"}', JSON, {413}),
]
