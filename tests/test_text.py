"""The text layer and the gate's metrics read English, Thai and Vietnamese alike: one
Unicode form, words where Thai writes none between them, scores that move by the same
amount for the same change in every language."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.core.text import fold, language, nfc, same_language, words
from retrain.text_metrics import chrf, exact, rouge_l

# One sentence in three languages, with four aligned slots, what fills them, and another
# word for each slot (a one-word change: the same change in every language).
SENTENCE = {
    "en": "You can return the {0} within {1} days at any {2} with your {3}.",
    "th": "คุณสามารถคืน{0}ได้ภายใน {1} วันที่{2}ใดก็ได้พร้อม{3}ค่ะ",
    "vi": "Bạn có thể trả lại {0} trong vòng {1} ngày tại bất kỳ {2} nào kèm {3}.",
}
FILL = {
    "en": ["shoes", "30", "store", "receipt"],
    "th": ["รองเท้า", "30", "สาขา", "ใบเสร็จ"],
    "vi": ["giày", "30", "cửa hàng", "hóa đơn"],
}
OTHER = {
    "en": ["jacket", "14", "branch", "invoice"],
    "th": ["เสื้อแจ็คเก็ต", "14", "ร้าน", "ใบกำกับภาษี"],
    "vi": ["áo khoác", "14", "chi nhánh", "biên lai"],
}
WRONG = {  # a wrong answer to the same question
    "en": "Sorry, we do not sell that item in our shops.",
    "th": "ขออภัยค่ะ เราไม่มีสินค้านี้จำหน่ายในร้านของเรา",
    "vi": "Xin lỗi, chúng tôi không bán mặt hàng này tại cửa hàng.",
}
LANGS = ["en", "th", "vi"]


def sentence(lang: str, changed: int | None = None) -> str:
    fill = list(FILL[lang])
    if changed is not None:
        fill[changed] = OTHER[lang][changed]
    return SENTENCE[lang].format(*fill)


def test_thai_is_cut_into_dictionary_words() -> None:
    assert words("ขอบคุณที่ติดต่อเราค่ะ") == ["ขอบคุณ", "ที่", "ติดต่อ", "เรา", "ค่ะ"]
    # digits between Thai words are words of their own
    assert words("ภายใน30วัน") == ["ภายใน", "30", "วัน"]


def test_vietnamese_syllables_and_english_words_split_on_spaces_and_punctuation() -> None:
    assert words("Đơn hàng của bạn, đã giao.") == [
        "đơn",
        "hàng",
        "của",
        "bạn",
        ",",
        "đã",
        "giao",
        ".",
    ]
    assert words("Yes: it's 30 days!") == ["yes", ":", "it's", "30", "days", "!"]


@pytest.mark.parametrize("lang", LANGS)
def test_nfd_text_is_the_same_text_as_nfc(lang: str) -> None:
    text = sentence(lang)
    decomposed = unicodedata.normalize("NFD", text)
    assert nfc(decomposed) == nfc(text) and fold(decomposed) == fold(text)
    assert words(decomposed) == words(text)
    assert chrf(decomposed, text) == 1.0 and rouge_l(decomposed, text) == 1.0
    assert exact(decomposed, text)


def test_text_without_diacritics_stays_different_text() -> None:
    assert fold("Đơn hàng") != fold("Don hang")
    assert not exact("Don hang cua ban", "Đơn hàng của bạn")


@pytest.mark.parametrize("slot", range(4))
@pytest.mark.parametrize("lang", ["th", "vi"])
def test_a_one_word_change_costs_what_it_costs_in_english(lang: str, slot: int) -> None:
    for metric in (chrf, rouge_l):
        english = metric(sentence("en", slot), sentence("en"))
        other = metric(sentence(lang, slot), sentence(lang))
        assert abs(other - english) <= 0.1, (metric.__name__, other, english)
        assert 0.7 < other < 1.0


@pytest.mark.parametrize("lang", LANGS)
def test_a_right_answer_outscores_a_wrong_one(lang: str) -> None:
    reference = sentence(lang)
    in_other_words = reference.replace(" ", "") if lang == "th" else reference.rstrip(".")
    for metric in (chrf, rouge_l):
        assert metric(in_other_words, reference) > 0.8
        assert metric(in_other_words, reference) > metric(WRONG[lang], reference) + 0.5


def test_a_thai_particle_or_a_missing_space_changes_little() -> None:
    text = sentence("th")
    assert chrf(text + "นะคะ", text) > 0.9 and rouge_l(text + "นะคะ", text) > 0.9
    assert chrf(text.replace(" ", ""), text) == 1.0


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("Where is my order? It has not arrived yet.", "en"),
        ("คำสั่งซื้อของฉันอยู่ที่ไหนคะ ยังไม่ได้รับเลย", "th"),
        ("Đơn hàng của tôi đâu rồi? Tôi vẫn chưa nhận được.", "vi"),
        (unicodedata.normalize("NFD", "Đơn hàng của tôi đâu rồi?"), "vi"),
        ("42", None),
    ],
)
def test_the_language_of_a_text(text: str, code: str | None) -> None:
    assert language(text) == code


def test_an_answer_in_another_language_than_the_question_is_told_apart() -> None:
    thai_question = "ขอคืนรองเท้าได้ไหมคะ"
    assert same_language(thai_question, sentence("th")) is True
    assert same_language(thai_question, sentence("en")) is False
    assert same_language(thai_question, "30") is None


ALPHABET = st.sampled_from(
    list("abcxyz019 .,!?-\n")
    + list("กขคงจฉมยรลวสหอะาิีึืุูเแโใไ่้๊๋็์ั")
    + list("ăâđêôơưàảãáạằẳẵắặầẩẫấậèẻẽéẹềểễếệìỉĩíịòỏõóọồổỗốộờởỡớợùủũúụừửữứựỳỷỹýỵ")
    + ["\u0301", "\u0303", "\u0323"]  # combining marks, as NFD text has them
)


@settings(max_examples=200, deadline=None)
@given(st.lists(ALPHABET, max_size=60).map("".join))
def test_words_lose_no_character_and_ignore_the_unicode_form(text: str) -> None:
    folded = fold(text)
    assert "".join(words(text)) == "".join(folded.split())
    assert words(unicodedata.normalize("NFD", text)) == words(text)
