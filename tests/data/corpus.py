"""A small messy corpus, written by the tests themselves: mixed encodings, HTML, Chinese
and English, exact and near duplicates, empty, binary and truncated files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

ENGLISH = (
    "The river town woke slowly under a pale sky, and the bakers were the first to open "
    "their doors. Children ran along the stone bridge with their satchels, while the old "
    "ferryman counted the boats that had come in during the night. It was market day, so "
    "the square filled with carts of apples, cheese and bright woollen cloth. By noon the "
    "church bell had rung twice and the travellers from the northern road had arrived with "
    "news of the harvest, which had been better than anyone had dared to hope that year."
)
# One word changed: a near duplicate of ENGLISH.
ENGLISH_NEAR = ENGLISH.replace("bright woollen cloth", "bright linen cloth")
CHINESE = ("今天天气很好，我们一起去公园散步。公园里有很多人在锻炼身体，孩子们在草地上玩耍。"
           "老人们坐在树下下棋，年轻人在湖边跑步。我们走了一个小时，然后在茶馆里喝茶聊天。")
FRENCH = ("Le café était très agréable ce matin-là. Nous avons parlé de la récolte, "
          "du marché et des élèves qui préparaient leur fête de fin d'année à l'école.")
UTF16_TEXT = ("This note was saved by an old editor in UTF-16 with a byte-order mark, "
              "and it must come out as ordinary text.")
HTML = """<!DOCTYPE html><html><head><title>Ignored title</title>
<style>body { color: red }</style><script>var tracking = 1;</script></head>
<body><nav>Home | About | Contact</nav>
<h1>Lighthouse keepers</h1>
<p>The keeper climbed the <b>spiral</b> stairs every evening to light the lamp.</p>
<p>Ships passed safely through the narrow strait all winter.</p>
<footer>Copyright 2024</footer></body></html>"""
MOJIBAKE = "The cafÃ© served crÃ¨me brÃ»lÃ©e to every guest."
PII = ("Write to jane.doe@example.com or call +1 415-555-0132. Card 4111 1111 1111 1111 "
       "was charged; 1234 5678 9012 3456 is not a card. Server at 192.168.10.20.")
CONTROL = "Zero\u200bwidth and\x07 bell characters\u00ad vanish."
RECORDS = [
    {"text": "Good service and a friendly team, I will come back.", "label": "pos"},
    {"text": "The food was cold and the waiter ignored us.", "label": "neg"},
    {"text": "Lovely view from the terrace, great coffee.", "label": "pos"},
    {"text": "Overpriced and noisy, not worth it.", "label": "neg"},
    {"label": "pos"},  # no text: a bad record
]


def build(root: Path) -> Path:
    """Write the corpus under ``root/corpus`` and return that folder."""
    d = root / "corpus"
    d.mkdir(parents=True)
    (d / "en.txt").write_text(ENGLISH, encoding="utf-8")
    (d / "en_copy.txt").write_text(ENGLISH, encoding="utf-8")
    (d / "en_near.txt").write_text(ENGLISH_NEAR, encoding="utf-8")
    (d / "zh_gbk.txt").write_bytes(CHINESE.encode("gbk"))
    (d / "fr_latin1.txt").write_bytes(FRENCH.encode("latin-1"))
    (d / "utf16.txt").write_bytes(UTF16_TEXT.encode("utf-16"))
    (d / "page.html").write_text(HTML, encoding="utf-8")
    (d / "mojibake.txt").write_text(MOJIBAKE, encoding="utf-8")
    (d / "pii.txt").write_text(PII, encoding="utf-8")
    (d / "control.txt").write_text(CONTROL, encoding="utf-8")
    (d / "empty.txt").write_bytes(b"")
    (d / "binary.txt").write_bytes(bytes(range(256)) * 4)
    (d / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    lines = [json.dumps(rec) for rec in RECORDS] + ["{not json"]
    (d / "reviews.jsonl.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    whole = gzip.compress(("\n".join(json.dumps({"text": ENGLISH}) for _ in range(50))).encode())
    (d / "truncated.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    return d
