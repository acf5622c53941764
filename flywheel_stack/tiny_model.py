"""A tiny random-weight Llama with a ChatML tokenizer, built offline and deterministically.

The model is noise until a LoRA is trained on it, but it is small (about 1.7 MB), builds
in seconds without network access and is served by vLLM on CPU: enough to exercise the
whole serve → rate → retrain → serve loop for real in tests.

Its byte-level BPE tokenizer is trained on English, Thai and Vietnamese support-desk text
(NFC), so that all three cost a sensible number of tokens (measured on sentences outside
the corpus: about 0.6 tokens per character in English, 0.5 in Thai and Vietnamese; a
tokenizer trained on English alone spends about 3 per Thai character, one per UTF-8 byte,
and the tiny model cannot learn a Thai answer in the built-in training steps).

Same seed → byte-identical files. The build happens in a temporary directory beside
``out_dir`` and is renamed into place; a finished build is marked by ``flywheel-tiny.json``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MARKER = "flywheel-tiny.json"
RECIPE_VERSION = 2

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
PAD = "<|endoftext|>"
SPECIAL_TOKENS = [PAD, IM_START, IM_END]

# GPT-2's split into words, except that combining marks belong to the word they are in
# (Thai vowel and tone marks, and Vietnamese diacritics written in NFD, are marks, and
# GPT-2's pattern would cut a Thai word at each of them), and that every digit is a token
# of its own, so that numbers of as many digits cost as many tokens.
WORDS = r"'s|'t|'re|'ve|'m|'ll|'d| ?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+|\s+(?!\S)|\s+"
VOCAB_SIZE = 1024  # a ceiling: the corpus below fills 832 of it

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

ENGLISH = [
    "Hello! How can I help you today?",
    "My order has not arrived yet. Where is my package?",
    "I am sorry for the delay. Could you share your order number, please?",
    "You can reset your password from the account settings page.",
    "We have issued a full refund; it should appear within five business days.",
    "Thank you for contacting customer support. Is there anything else I can do?",
    "The invoice for your subscription was sent to your email address.",
    "To cancel your plan, open Billing and choose Cancel subscription.",
    "Please restart the app and try again. If the problem persists, contact us.",
    "Our support team is available Monday to Friday, 9am to 5pm.",
    "The quick brown fox jumps over the lazy dog.",
    'user assistant system tool: {"name": "lookup_order", "arguments": {}}',
    "0123456789 .,;:!?'\"()[]{}<>/\\-_+=*&%$#@ \n\t",
]
# Thai and Vietnamese support-desk text, so that the tokenizer learns their letters and
# common syllables: without it a Thai character costs about 3 tokens (its UTF-8 bytes)
# and the tiny model cannot learn a Thai answer in the built-in training steps.
THAI = [
    "สวัสดีค่ะ มีอะไรให้ช่วยไหมคะ",
    "สวัสดีครับ วันนี้ให้เราช่วยอะไรได้บ้างครับ",
    "คำสั่งซื้อของฉันยังไม่มาถึงเลย พัสดุอยู่ที่ไหนคะ",
    "ขออภัยในความล่าช้าค่ะ รบกวนแจ้งหมายเลขคำสั่งซื้อด้วยนะคะ",
    "คุณสามารถเปลี่ยนรหัสผ่านได้ที่หน้าการตั้งค่าบัญชีค่ะ",
    "เราคืนเงินเต็มจำนวนให้แล้ว เงินจะเข้าบัญชีภายใน 5 วันทำการค่ะ",
    "ขอบคุณที่ติดต่อฝ่ายบริการลูกค้าค่ะ มีอะไรให้ช่วยอีกไหมคะ",
    "ใบแจ้งหนี้ของการสมัครสมาชิกถูกส่งไปที่อีเมลของคุณแล้วครับ",
    "หากต้องการยกเลิกแพ็กเกจ ให้เปิดหน้าการชำระเงินแล้วเลือกยกเลิกการสมัครสมาชิก",
    "กรุณาปิดแอปแล้วลองใหม่อีกครั้ง หากยังมีปัญหา โปรดติดต่อเรา",
    "ทีมบริการลูกค้าพร้อมให้บริการวันจันทร์ถึงวันศุกร์ เวลา 9.00 ถึง 17.00 น.",
    "สินค้าที่ยังไม่ได้ใช้สามารถคืนได้ภายใน 30 วันพร้อมใบเสร็จค่ะ",
    "กรุณาเก็บใบเสร็จไว้เป็นหลักฐานการซื้อนะคะ",
    "รองเท้า เสื้อเชิ้ต เสื้อแจ็กเก็ต กระเป๋า หมวก ถุงเท้า และเข็มขัด อยู่ในหมวดแฟชั่นค่ะ",
    "ผ้าพันคอ ถุงมือ นาฬิกา รองเท้าบูท และเสื้อโค้ท ลดราคาถึงสิ้นเดือนนี้ครับ",
    "ขอเปลี่ยนไซซ์ได้ไหมคะ ได้ค่ะ เปลี่ยนได้ฟรีหนึ่งครั้งค่ะ",
    "ถ้าสินค้าชำรุด เราจะส่งชิ้นใหม่ให้ทันทีค่ะ",
    "ค่าจัดส่งฟรีเมื่อสั่งซื้อครบ 500 บาทครับ",
    "คุณจะได้รับเงินคืนผ่านบัตรเครดิตใบเดิมที่ใช้ชำระเงินค่ะ",
    "ขอโทษด้วยครับ ระบบกำลังปิดปรับปรุงชั่วคราว",
    "ติดตามสถานะพัสดุได้จากลิงก์ในอีเมลยืนยันคำสั่งซื้อค่ะ",
    "ได้ครับ เราจะตรวจสอบให้และแจ้งกลับภายในวันนี้ครับ",
    "ถ้าต้องการคืนสินค้า กรุณากรอกแบบฟอร์มคืนสินค้าในหน้าคำสั่งซื้อของฉันค่ะ",
    "ไม่ได้ค่ะ สินค้าลดราคาคืนไม่ได้ แต่เปลี่ยนไซซ์ได้ค่ะ",
    "ชำระเงินปลายทางได้ไหมครับ ได้ครับ เรามีบริการเก็บเงินปลายทาง",
    "ขอใบกำกับภาษีได้ไหมคะ ได้ค่ะ กรุณาแจ้งชื่อและเลขประจำตัวผู้เสียภาษีค่ะ",
]
VIETNAMESE = [
    "Xin chào! Tôi có thể giúp gì cho bạn hôm nay?",
    "Đơn hàng của tôi vẫn chưa đến. Gói hàng của tôi đang ở đâu?",
    "Xin lỗi vì sự chậm trễ. Bạn vui lòng cho biết mã đơn hàng được không?",
    "Bạn có thể đặt lại mật khẩu trong trang cài đặt tài khoản.",
    "Chúng tôi đã hoàn tiền đầy đủ; tiền sẽ về tài khoản trong vòng năm ngày làm việc.",
    "Cảm ơn bạn đã liên hệ bộ phận chăm sóc khách hàng. Bạn cần hỗ trợ thêm gì không?",
    "Hóa đơn gói đăng ký đã được gửi đến địa chỉ email của bạn.",
    "Để hủy gói, hãy mở mục Thanh toán và chọn Hủy đăng ký.",
    "Vui lòng khởi động lại ứng dụng và thử lại. Nếu vẫn gặp sự cố, hãy liên hệ với chúng tôi.",
    "Đội hỗ trợ làm việc từ thứ Hai đến thứ Sáu, từ 9 giờ sáng đến 5 giờ chiều.",
    "Sản phẩm chưa sử dụng có thể được trả lại trong vòng 30 ngày kèm hóa đơn.",
    "Giày, áo sơ mi, áo khoác, túi xách, mũ, tất và thắt lưng đang được giảm giá.",
    "Khăn quàng, găng tay, đồng hồ, giày bốt và áo choàng được miễn phí vận chuyển.",
    "Tôi có thể đổi cỡ không? Có, bạn được đổi miễn phí một lần.",
    "Nếu sản phẩm bị lỗi, chúng tôi sẽ gửi sản phẩm mới cho bạn ngay.",
    "Miễn phí giao hàng cho đơn từ 500.000 đồng.",
    "Bạn sẽ nhận lại tiền qua thẻ tín dụng đã dùng để thanh toán.",
    "Bạn có thể theo dõi đơn hàng bằng đường liên kết trong email xác nhận.",
    "Vâng, chúng tôi sẽ kiểm tra và phản hồi cho bạn trong hôm nay.",
    "Không, hàng giảm giá không được trả lại, nhưng có thể đổi cỡ.",
    "Tôi có thể thanh toán khi nhận hàng không? Có, chúng tôi hỗ trợ thanh toán khi nhận hàng.",
]
CORPUS = [unicodedata.normalize("NFC", line) for line in ENGLISH + THAI + VIETNAMESE]


def build_tiny_model(out_dir: Path, *, seed: int = 0, force: bool = False) -> Path:
    """Build the tiny model into ``out_dir`` (skipped if already built with ``seed``)."""
    return build_once(
        out_dir, MARKER, _marker(seed), lambda tmp: _build_into(tmp, seed=seed), force
    )


def is_built(model_dir: Path, *, seed: int) -> bool:
    """True when ``model_dir`` holds a complete build of this recipe with ``seed``."""
    return bool(read_marker(model_dir, MARKER) == _marker(seed))


def read_marker(model_dir: Path, name: str) -> Any:
    """The build marker a finished build leaves in ``model_dir`` (None: none readable)."""
    try:
        return json.loads((Path(model_dir) / name).read_text())
    except (OSError, ValueError):
        return None


def build_once(
    out_dir: Path,
    marker_name: str,
    marker: dict[str, Any],
    build_into: Callable[[Path], None],
    force: bool = False,
) -> Path:
    """Build a model into ``out_dir`` unless it already holds ``marker``: built in a
    temporary sibling and swapped in whole, so a crash never leaves half a model."""
    out_dir = Path(out_dir).resolve()
    if not force and read_marker(out_dir, marker_name) == marker:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        build_into(tmp)
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _marker(seed: int) -> dict[str, Any]:
    return {"recipe": "flywheel-tiny-llama", "version": RECIPE_VERSION, "seed": seed}


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``, replacing an existing ``target`` as atomically as we can."""
    old: Path | None = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, old / target.name)
    try:
        os.replace(new, target)
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _train_tokenizer() -> Any:
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(WORDS), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    return tok


def _build_into(out: Path, *, seed: int) -> None:
    import torch
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=_train_tokenizer(),
        eos_token=IM_END,
        pad_token=PAD,
        model_max_length=1024,
        chat_template=CHAT_TEMPLATE,
    )
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,  # head_dim 64: CPU attention rejects smaller heads
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)  # type: ignore[no-untyped-call]
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        eos_token_id=eos_id, pad_token_id=pad_id
    )
    with _quiet_progress():
        model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    _write_json(out / "tokenizer_config.json", _portable_tokenizer_config(out))
    _write_json(out / MARKER, _marker(seed))
    for path in out.iterdir():
        path.chmod(0o644)
    out.chmod(0o755)  # mkdtemp made it 0700


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _portable_tokenizer_config(out: Path) -> dict[str, Any]:
    """Name the class both transformers 4 and 5 know, and inline the chat template."""
    config: dict[str, Any] = json.loads((out / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = CHAT_TEMPLATE
    config["clean_up_tokenization_spaces"] = False
    config.pop("backend", None)
    return config


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
