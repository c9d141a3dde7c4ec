"""The project's own sample customer messages (written by the team, not shared data): both scripts,
calm to furious, single words to long complaints, one threat. Tests, the benchmarks and the server
memory check feed them to a model; keeping one list means they all exercise the same mix.
"""

#: the first seven are the short mix most tests use (``SAMPLE_MESSAGES[:7]``)
SAMPLE_MESSAGES: tuple[str, ...] = (
    "為什麼7號還要算錢?你們到底怎麼算的!",
    "请问营业时间",
    "退款",
    "太离谱了，我要投诉你们的客服，电话打了三次都没人接，快递也没到",
    "好",
    "你們客服態度太差了!",
    "包裹坏了怎么办",
    "我的订单什么时候发货？",
    "帳單多扣了三百元，馬上給我退回來",
    "再不处理我就去消保会投诉",
    "網路一直斷線，已經第三天了",
    "谢谢你们的帮忙",
    "登入不了，密碼重設也收不到簡訊",
    "你们是骗子吧，钱扣了东西没到",
    "请问可以换货吗",
    "客服电话一直占线，到底有没有人",
    "我要取消訂單",
    "這是我第五次打來了，每次都說會處理",
    "运费怎么这么贵",
    "APP 更新後就一直閃退",
    "我很失望",
    "东西质量太差了，要求全额退款",
    "可以幫我查一下物流嗎",
    "你们的服务越来越差",
)
