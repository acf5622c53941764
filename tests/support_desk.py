"""Support-desk questions and answers in English, Thai and Vietnamese, as Flywheel's users
write them: Thai with no spaces between words (a space ends a phrase), Vietnamese with
its diacritics, in NFC. Ten distinct pairs a language, on ten different problems.

The curation tests and ``bench/curate_languages.py`` compare them; ``REPLACEMENTS`` are
words of each language to put in place of one of a text's words.
"""

from __future__ import annotations

SYSTEM_WORDS = (
    "You are the support assistant of an online shop. Answer politely and briefly, in the "
    "language of the customer. Never promise refunds the policy does not allow. "
).split()

PAIRS: dict[str, list[tuple[str, str]]] = {
    "en": [
        (
            "I forgot my password and cannot log in to my account. What should I do?",
            "Please click the Forgot password link on the login page and enter the email "
            "address you used when you signed up. We will send you a link to set a new "
            "password within five minutes. If the email does not arrive, check your spam "
            "folder or call our support line, and an agent will reset it for you after "
            "checking your identity.",
        ),
        (
            "I want to cancel the order I placed this morning.",
            "You can cancel an order within twenty-four hours of placing it. Open your order "
            "history, choose the order and press Cancel. The money goes back to the card you "
            "paid with within seven working days, and you will get an email as soon as the "
            "refund has been sent to your bank.",
        ),
        (
            "Why has my parcel still not arrived? I ordered it a week ago.",
            "We are sorry for the delay. Your parcel is at our distribution centre in the "
            "city and will be delivered to your home within two days. You can follow it with "
            "the tracking number in your confirmation email, and the courier will send you a "
            "text message on the morning of the delivery.",
        ),
        (
            "How do I change the delivery address on my account?",
            "Go to My account, open the Address book and press Edit next to the address you "
            "want to change. Once you save it, your next orders will be sent to the new "
            "address. Orders that have already been shipped cannot be redirected, but the "
            "courier can hold them at a pickup point near you if you ask.",
        ),
        (
            "The app closes by itself every time I open the payment page.",
            "Please update the app to the latest version from the app store, then restart "
            "your phone and try again. If the problem is still there, send us the model of "
            "your phone and the version of its operating system, and our developers will "
            "look into it and reply to you within three working days.",
        ),
        (
            "Can I return a jacket that does not fit me?",
            "Yes. Clothes can be returned within thirty days if they are unworn and still "
            "have their labels. Print the free return label from your order page, pack the "
            "jacket in its original bag and drop it at any post office. We refund the full "
            "price once the warehouse has checked the parcel.",
        ),
        (
            "I was charged twice for the same order.",
            "We apologise for the trouble. The second charge is a temporary hold by your "
            "bank while the payment is confirmed, and it disappears by itself within three "
            "to five days. If you still see two charges after a week, reply to this message "
            "with a screenshot of your statement and we will refund the extra amount.",
        ),
        (
            "How long does the warranty on the coffee machine last?",
            "The coffee machine has a two-year warranty from the date of delivery. It covers "
            "faults in the pump, the heater and the electronics, but not damage from "
            "limescale, so please descale it every month. To make a claim, fill in the "
            "warranty form with your order number and a short video of the problem.",
        ),
        (
            "My discount code does not work at checkout.",
            "Discount codes are valid only for the items shown in the promotion and only "
            "before the end date written in the email. Check that the code is typed in "
            "capital letters without spaces. If your basket qualifies and it still fails, "
            "send us the code and we will apply the discount to your order by hand.",
        ),
        (
            "Can I change the size of my order after paying?",
            "If the order has not been packed yet, our team can change the size for you. "
            "Reply with the order number and the size you need before four in the afternoon, "
            "and we will update it the same day. If it has already been packed, you can "
            "exchange the item for free after it arrives.",
        ),
    ],
    "th": [
        (
            "ฉันลืมรหัสผ่านและเข้าสู่ระบบไม่ได้ ต้องทำอย่างไร",
            "กรุณากดลิงก์ลืมรหัสผ่านที่หน้าเข้าสู่ระบบ แล้วกรอกอีเมลที่ใช้สมัครสมาชิก "
            "ระบบจะส่งลิงก์สำหรับตั้งรหัสผ่านใหม่ไปให้ภายในห้านาที "
            "หากไม่ได้รับอีเมลกรุณาตรวจสอบในกล่องจดหมายขยะ "
            "หรือโทรหาฝ่ายบริการลูกค้า เจ้าหน้าที่จะช่วยตั้งรหัสผ่านใหม่ให้หลังจากยืนยันตัวตนแล้ว",
        ),
        (
            "ฉันต้องการยกเลิกคำสั่งซื้อที่สั่งไปเมื่อเช้านี้",
            "คุณสามารถยกเลิกคำสั่งซื้อได้ภายในยี่สิบสี่ชั่วโมงหลังจากสั่งซื้อ "
            "โดยไปที่หน้าประวัติการสั่งซื้อ เลือกคำสั่งซื้อแล้วกดยกเลิก "
            "เงินจะคืนเข้าบัตรที่ใช้ชำระภายในเจ็ดวันทำการ "
            "และคุณจะได้รับอีเมลแจ้งทันทีที่ธนาคารได้รับเงินคืนแล้ว",
        ),
        (
            "ทำไมพัสดุของฉันยังไม่มาถึง ทั้งที่สั่งไปหนึ่งสัปดาห์แล้ว",
            "ขออภัยในความล่าช้าค่ะ พัสดุของคุณอยู่ที่ศูนย์กระจายสินค้าในกรุงเทพ "
            "และจะจัดส่งถึงบ้านภายในสองวัน คุณสามารถติดตามสถานะได้จากหมายเลขพัสดุในอีเมลยืนยัน "
            "และพนักงานขนส่งจะส่งข้อความแจ้งในเช้าวันที่จัดส่ง",
        ),
        (
            "จะเปลี่ยนที่อยู่สำหรับจัดส่งสินค้าในบัญชีได้อย่างไร",
            "เข้าไปที่หน้าบัญชีของฉัน เลือกสมุดที่อยู่ แล้วกดแก้ไขที่อยู่ที่ต้องการเปลี่ยน "
            "เมื่อบันทึกแล้วคำสั่งซื้อครั้งต่อไปจะส่งไปที่อยู่ใหม่ "
            "ส่วนคำสั่งซื้อที่จัดส่งไปแล้วจะเปลี่ยนที่อยู่ไม่ได้ "
            "แต่คุณสามารถขอให้บริษัทขนส่งเก็บพัสดุไว้ที่จุดรับสินค้าใกล้บ้านได้",
        ),
        (
            "แอปปิดตัวเองทุกครั้งที่เปิดหน้าชำระเงิน",
            "กรุณาอัปเดตแอปเป็นเวอร์ชันล่าสุดจากร้านค้าแอป แล้วปิดและเปิดโทรศัพท์ใหม่อีกครั้ง "
            "หากยังมีปัญหาอยู่ กรุณาส่งรุ่นของโทรศัพท์และเวอร์ชันของระบบปฏิบัติการมาให้เรา "
            "ทีมพัฒนาจะตรวจสอบและตอบกลับภายในสามวันทำการ",
        ),
        (
            "ฉันขอคืนเสื้อแจ็กเก็ตที่ใส่ไม่พอดีได้ไหม",
            "ได้ค่ะ เสื้อผ้าสามารถคืนได้ภายในสามสิบวันถ้ายังไม่ได้สวมใส่และป้ายยังติดอยู่ "
            "กรุณาพิมพ์ใบส่งคืนฟรีจากหน้าคำสั่งซื้อ ใส่เสื้อในถุงเดิมแล้วนำไปส่งที่ไปรษณีย์ใดก็ได้ "
            "เราจะคืนเงินเต็มจำนวนเมื่อคลังสินค้าตรวจสอบพัสดุเรียบร้อยแล้ว",
        ),
        (
            "ฉันถูกตัดเงินสองครั้งสำหรับคำสั่งซื้อเดียวกัน",
            "ขออภัยในความไม่สะดวกค่ะ รายการที่สองเป็นการกันวงเงินชั่วคราวของธนาคารระหว่างยืนยันการชำระเงิน "
            "และจะหายไปเองภายในสามถึงห้าวัน "
            "หากผ่านไปหนึ่งสัปดาห์แล้วยังเห็นสองรายการ กรุณาส่งภาพหน้าจอรายการเดินบัญชีมาให้เรา "
            "แล้วเราจะคืนเงินส่วนที่เกินให้",
        ),
        (
            "เครื่องชงกาแฟมีการรับประกันกี่ปี",
            "เครื่องชงกาแฟมีการรับประกันสองปีนับจากวันที่ได้รับสินค้า "
            "ครอบคลุมความเสียหายของปั๊ม ตัวทำความร้อน และระบบไฟฟ้า "
            "แต่ไม่รวมความเสียหายจากคราบหินปูน จึงควรล้างตะกรันทุกเดือน "
            "หากต้องการเคลมกรุณากรอกแบบฟอร์มพร้อมหมายเลขคำสั่งซื้อและวิดีโอสั้นของปัญหา",
        ),
        (
            "โค้ดส่วนลดของฉันใช้ไม่ได้ตอนชำระเงิน",
            "โค้ดส่วนลดใช้ได้เฉพาะกับสินค้าที่ร่วมรายการและก่อนวันหมดเขตที่แจ้งไว้ในอีเมลเท่านั้น "
            "กรุณาตรวจสอบว่าพิมพ์โค้ดเป็นตัวพิมพ์ใหญ่และไม่มีช่องว่าง "
            "หากสินค้าในตะกร้าเข้าเงื่อนไขแต่ยังใช้ไม่ได้ กรุณาส่งโค้ดมาให้เรา "
            "แล้วเราจะปรับส่วนลดให้ในคำสั่งซื้อของคุณเอง",
        ),
        (
            "ฉันเปลี่ยนขนาดสินค้าหลังจากชำระเงินแล้วได้ไหม",
            "ถ้าคำสั่งซื้อยังไม่ได้แพ็กสินค้า ทีมงานสามารถเปลี่ยนขนาดให้ได้ "
            "กรุณาตอบกลับพร้อมหมายเลขคำสั่งซื้อและขนาดที่ต้องการก่อนสี่โมงเย็น "
            "แล้วเราจะแก้ไขให้ภายในวันเดียวกัน ถ้าแพ็กสินค้าไปแล้ว "
            "คุณสามารถเปลี่ยนสินค้าได้ฟรีหลังจากได้รับพัสดุ",
        ),
    ],
    "vi": [
        (
            "Tôi quên mật khẩu và không đăng nhập được vào tài khoản, tôi phải làm gì?",
            "Bạn hãy bấm vào liên kết Quên mật khẩu ở trang đăng nhập và nhập địa chỉ email "
            "đã dùng để đăng ký. Hệ thống sẽ gửi cho bạn một liên kết để đặt lại mật khẩu "
            "trong vòng năm phút. Nếu không thấy email, vui lòng kiểm tra thư mục thư rác "
            "hoặc gọi tổng đài hỗ trợ, nhân viên sẽ đặt lại mật khẩu sau khi xác minh danh tính.",
        ),
        (
            "Tôi muốn hủy đơn hàng vừa đặt sáng nay.",
            "Bạn có thể hủy đơn hàng trong vòng hai mươi bốn giờ sau khi đặt. Hãy mở lịch sử "
            "đơn hàng, chọn đơn cần hủy và bấm Hủy. Tiền sẽ được hoàn về thẻ bạn đã dùng để "
            "thanh toán trong vòng bảy ngày làm việc, và bạn sẽ nhận được email ngay khi ngân "
            "hàng nhận được khoản hoàn tiền.",
        ),
        (
            "Tại sao bưu kiện của tôi vẫn chưa đến dù tôi đã đặt hàng một tuần trước?",
            "Chúng tôi xin lỗi vì sự chậm trễ. Bưu kiện của bạn đang ở trung tâm phân phối "
            "tại Hà Nội và sẽ được giao đến nhà bạn trong vòng hai ngày. Bạn có thể theo dõi "
            "bằng mã vận đơn trong email xác nhận, và nhân viên giao hàng sẽ nhắn tin cho bạn "
            "vào buổi sáng ngày giao.",
        ),
        (
            "Làm sao để thay đổi địa chỉ giao hàng trong tài khoản?",
            "Bạn vào mục Tài khoản của tôi, mở Sổ địa chỉ và bấm Sửa bên cạnh địa chỉ muốn "
            "thay đổi. Sau khi lưu, các đơn hàng tiếp theo sẽ được giao đến địa chỉ mới. Những "
            "đơn đã được gửi đi thì không thể đổi địa chỉ, nhưng bạn có thể nhờ đơn vị vận "
            "chuyển giữ hàng tại điểm nhận gần nhà.",
        ),
        (
            "Ứng dụng tự tắt mỗi lần tôi mở trang thanh toán.",
            "Bạn vui lòng cập nhật ứng dụng lên phiên bản mới nhất từ cửa hàng ứng dụng, sau "
            "đó khởi động lại điện thoại và thử lại. Nếu vẫn còn lỗi, hãy gửi cho chúng tôi "
            "tên mẫu điện thoại và phiên bản hệ điều hành, đội ngũ kỹ thuật sẽ kiểm tra và "
            "trả lời bạn trong vòng ba ngày làm việc.",
        ),
        (
            "Tôi có thể trả lại chiếc áo khoác không vừa không?",
            "Được ạ. Quần áo có thể được trả lại trong vòng ba mươi ngày nếu chưa mặc và còn "
            "nguyên nhãn mác. Bạn hãy in phiếu trả hàng miễn phí từ trang đơn hàng, cho áo vào "
            "túi ban đầu và gửi tại bất kỳ bưu điện nào. Chúng tôi sẽ hoàn lại toàn bộ số tiền "
            "khi kho đã kiểm tra xong bưu kiện.",
        ),
        (
            "Tôi bị trừ tiền hai lần cho cùng một đơn hàng.",
            "Chúng tôi rất xin lỗi vì sự bất tiện này. Khoản trừ thứ hai là khoản tạm giữ của "
            "ngân hàng trong lúc xác nhận thanh toán và sẽ tự biến mất sau ba đến năm ngày. "
            "Nếu sau một tuần bạn vẫn thấy hai khoản, hãy trả lời tin nhắn này kèm ảnh chụp "
            "sao kê, chúng tôi sẽ hoàn lại số tiền bị trừ thừa.",
        ),
        (
            "Máy pha cà phê được bảo hành bao lâu?",
            "Máy pha cà phê được bảo hành hai năm kể từ ngày nhận hàng. Bảo hành bao gồm lỗi "
            "của máy bơm, bộ phận làm nóng và mạch điện, nhưng không bao gồm hư hỏng do cặn "
            "vôi, vì vậy bạn nên tẩy cặn mỗi tháng. Để yêu cầu bảo hành, hãy điền biểu mẫu "
            "kèm mã đơn hàng và một đoạn video ngắn về sự cố.",
        ),
        (
            "Mã giảm giá của tôi không dùng được khi thanh toán.",
            "Mã giảm giá chỉ áp dụng cho các sản phẩm trong chương trình khuyến mãi và trước "
            "ngày hết hạn ghi trong email. Bạn hãy kiểm tra xem mã đã được nhập bằng chữ in "
            "hoa và không có khoảng trắng chưa. Nếu giỏ hàng đủ điều kiện mà vẫn không được, "
            "hãy gửi mã cho chúng tôi để chúng tôi áp dụng giảm giá thủ công.",
        ),
        (
            "Tôi có thể đổi cỡ sản phẩm sau khi đã thanh toán không?",
            "Nếu đơn hàng chưa được đóng gói, nhân viên có thể đổi cỡ giúp bạn. Hãy trả lời "
            "kèm mã đơn hàng và cỡ bạn cần trước bốn giờ chiều, chúng tôi sẽ cập nhật ngay "
            "trong ngày. Nếu đơn đã được đóng gói, bạn có thể đổi sản phẩm miễn phí sau khi "
            "nhận hàng.",
        ),
    ],
}

# Words to put in place of one of a text's words (each a word of its language; in
# Vietnamese, a syllable).
REPLACEMENTS: dict[str, list[str]] = {
    "en": ["quickly", "parcel", "manager", "tomorrow", "account", "receipt"],
    "th": ["พรุ่งนี้", "ผู้จัดการ", "ใบเสร็จ", "รวดเร็ว", "โทรศัพท์", "ตู้เย็น"],
    "vi": ["sớm", "muộn", "nhanh", "mới", "lớn", "xanh"],
}

# Returns at the same support desk in three languages. Per item: the question, the
# reference answer, a wrong answer (what a poor model says), a right answer in other words
# (what a good model says: Thai models often leave out the spaces) and that answer with a
# wrong fact (3 days for 30). The gate's tests and ``bench/languages.py`` use them.
ITEMS = ["shoes", "shirts", "bags", "hats", "socks", "belts", "scarves", "gloves", "boots", "coats"]
THAI_ITEMS = [
    "รองเท้า",
    "เสื้อ",
    "กระเป๋า",
    "หมวก",
    "ถุงเท้า",
    "เข็มขัด",
    "ผ้าพันคอ",
    "ถุงมือ",
    "รองเท้าบูท",
    "เสื้อโค้ท",
]
VIETNAMESE_ITEMS = [
    "giày",
    "áo sơ mi",
    "túi xách",
    "mũ",
    "tất",
    "thắt lưng",
    "khăn quàng",
    "găng tay",
    "ủng",
    "áo khoác",
]
RETURNS: dict[str, list[tuple[str, str, str, str, str]]] = {
    "en": [
        (
            f"Can I return {x}?",
            f"Yes: {x} can be returned within 30 days with the receipt.",
            "I am not sure, please ask the store.",
            f"Yes, {x} can be returned within 30 days with the receipt",
            f"Yes, {x} can be returned within 3 days with the receipt",
        )
        for x in ITEMS
    ],
    "th": [
        (
            f"ขอคืน{x}ได้ไหมคะ",
            f"ได้ค่ะ คุณสามารถคืน{x}ได้ภายใน 30 วันพร้อมใบเสร็จค่ะ",
            "ขออภัยค่ะ ไม่ทราบข้อมูล กรุณาติดต่อร้านค้าค่ะ",
            f"คุณสามารถคืน{x}ได้ภายใน30วันพร้อมใบเสร็จค่ะ",
            f"คุณสามารถคืน{x}ได้ภายใน3วันพร้อมใบเสร็จค่ะ",
        )
        for x in THAI_ITEMS
    ],
    "vi": [
        (
            f"Tôi có thể trả lại {x} không?",
            f"Được ạ: bạn có thể trả lại {x} trong vòng 30 ngày kèm hóa đơn.",
            "Tôi không chắc, vui lòng hỏi cửa hàng.",
            f"Được, bạn có thể trả lại {x} trong vòng 30 ngày kèm hóa đơn",
            f"Được, bạn có thể trả lại {x} trong vòng 3 ngày kèm hóa đơn",
        )
        for x in VIETNAMESE_ITEMS
    ],
}
