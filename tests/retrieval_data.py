"""Retrieval feedback in English and Thai: support-desk questions and the passages that
answer them, for the embeddings tests.

Ten products × two topics (returns, delivery) × two languages give 40 passages; each
(product, topic, language) is asked five ways, 200 questions in all. A question's
relevant passage is its product's passage on its topic, and the hard negative is the same
product's passage on the other topic: words shared with the product name alone do not
find the answer, the question's topic must. Held-out questions are phrasings never
trained on for their product (the split is by question).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

ITEMS = [
    ("shoes", "รองเท้า"),
    ("shirts", "เสื้อเชิ้ต"),
    ("jackets", "เสื้อแจ็กเก็ต"),
    ("bags", "กระเป๋า"),
    ("hats", "หมวก"),
    ("socks", "ถุงเท้า"),
    ("belts", "เข็มขัด"),
    ("scarves", "ผ้าพันคอ"),
    ("gloves", "ถุงมือ"),
    ("watches", "นาฬิกา"),
]
PASSAGES = {
    ("en", "returns"): "{item} can be returned within 30 days with the receipt for a full refund.",
    ("en", "delivery"): "{item} are delivered in 3 to 5 business days; tracking is in the "
    "confirmation email.",
    ("th", "returns"): "{item}คืนได้ภายใน 30 วันพร้อมใบเสร็จ และได้รับเงินคืนเต็มจำนวน",
    ("th", "delivery"): "{item}จัดส่งภายใน 3 ถึง 5 วันทำการ ติดตามพัสดุได้จากอีเมลยืนยัน",
}
QUESTIONS = {
    ("en", "returns"): [
        "Can I return my {item}?",
        "How do I send {item} back?",
        "Is a refund possible for {item}?",
        "What is the return policy for {item}?",
        "I want my money back for the {item}",
    ],
    ("en", "delivery"): [
        "When will my {item} arrive?",
        "How long does shipping take for {item}?",
        "Where are my {item}?",
        "How fast is delivery of {item}?",
        "Can I track my {item} order?",
    ],
    ("th", "returns"): [
        "คืน{item}ได้ไหม",
        "ขอส่ง{item}กลับได้อย่างไร",
        "ขอเงินคืนค่า{item}ได้ไหม",
        "นโยบายการคืน{item}เป็นอย่างไร",
        "อยากได้เงินคืนสำหรับ{item}",
    ],
    ("th", "delivery"): [
        "{item}จะมาถึงเมื่อไหร่",
        "ส่ง{item}ใช้เวลากี่วัน",
        "{item}ของฉันอยู่ที่ไหน",
        "จัดส่ง{item}เร็วแค่ไหน",
        "ติดตามคำสั่งซื้อ{item}ได้ไหม",
    ],
}
OTHER = {"returns": "delivery", "delivery": "returns"}


@dataclass(frozen=True)
class Example:
    language: str
    query: str
    relevant: str
    irrelevant: str


def _fill(template: str, item: str, language: str) -> str:
    text = template.format(item=item)
    if language == "en" and text.startswith(item):
        text = text[0].upper() + text[1:]
    return unicodedata.normalize("NFC", text)


def examples() -> list[Example]:
    """The 200 questions, each with its relevant passage and its hard negative."""
    out = []
    for en, th in ITEMS:
        for language, item in (("en", en), ("th", th)):
            for topic in ("returns", "delivery"):
                relevant = _fill(PASSAGES[(language, topic)], item, language)
                irrelevant = _fill(PASSAGES[(language, OTHER[topic])], item, language)
                for question in QUESTIONS[(language, topic)]:
                    out.append(
                        Example(language, _fill(question, item, language), relevant, irrelevant)
                    )
    return out
