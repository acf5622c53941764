"""Support answers in Thai, Vietnamese and English, as Flywheel's users write them: the
token counts and answer budgets are checked on these."""

from __future__ import annotations

# A real refund answer, 177 characters in each language (NFC).
THAI = (
    "คุณสามารถขอคืนเงินได้ภายใน 30 วันหลังจากได้รับสินค้า โดยเข้าไปที่หน้าคำสั่งซื้อของคุณ "
    "เลือกรายการที่ต้องการคืน แล้วกดปุ่มขอคืนเงิน เราจะโอนเงินกลับภายในห้าวันทำการ ขอบคุณมากนะคะ"
)
VIETNAMESE = (
    "Bạn có thể yêu cầu hoàn tiền trong 30 ngày, sau khi nhận hàng. Hãy mở trang đơn hàng, "
    "chọn sản phẩm muốn trả lại rồi nhấn Hoàn tiền. Chúng tôi sẽ chuyển tiền lại trong năm ngày."
)
ENGLISH = (
    "You can ask for a refund within 30 days of receiving your order. Open the order page, "
    "choose the item you want to return and press Refund. The money comes back within five days."
)
ANSWERS = {"th": THAI, "vi": VIETNAMESE, "en": ENGLISH}

_QUESTIONS = {
    "th": "ฉันจะขอคืนเงินสำหรับคำสั่งซื้อหมายเลข {n} ได้อย่างไร",
    "vi": "Làm sao để tôi được hoàn tiền cho đơn hàng số {n}?",
    "en": "How do I get a refund for order {n}?",
}


def pairs(language: str, n: int = 10) -> list[tuple[str, str]]:
    """``n`` questions and their expected answers: the refund answer, for order ``i``
    and a window of ``20 + i`` days."""
    return [
        (
            _QUESTIONS[language].format(n=1000 + i),
            ANSWERS[language].replace("30", str(20 + i), 1),
        )
        for i in range(n)
    ]
