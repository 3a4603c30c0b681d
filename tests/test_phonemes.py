"""Text -> normalised IPA: espeak-ng per language, real G2P for zh / ja / ko, one form for the
written, romanised and mis-heard versions of a line."""

from __future__ import annotations

import pytest
from songmill.annotate import phonemes
from songmill.annotate.phonemes import (
    hangul_to_ipa,
    kana_to_romaji,
    normalise_ipa,
    normalise_language,
    phoneme_key,
    pinyin_to_ipa,
    strip_section_tags,
    to_ipa,
    to_ipa_batch,
)


def test_language_codes_are_normalised():
    assert [normalise_language(x) for x in ("en-US", "English", "eng", None, "zh-cn", "ZH_TW", "ja", "pt-BR")] == [
        "en", "en", "en", "en", "zh", "zh", "ja", "pt",
    ]  # fmt: skip


def test_section_tags_and_marks_are_dropped():
    text = "[Chorus]\nVerse 2:\nHello, world!\n(x2)\n{spoken}"
    assert strip_section_tags(text).split() == ["Hello,", "world!"]
    assert normalise_ipa("həˈloʊ wˈɜːld, ʃiː!") == "həloʊ wɜld ʃi"
    assert normalise_ipa("ni2χɑu2 tʰa ɑ̃") == "niχɑu ta ɑ"
    assert phoneme_key("a b  c") == "abc"


def test_english_through_espeak_ignores_case_punctuation_and_tags():
    assert to_ipa("Hello world") == "həloʊ wɜld"
    assert to_ipa("[Chorus]\nHELLO, World!!") == to_ipa("hello world")
    assert to_ipa_batch(["", "  ", "rain"], "en") == ["", "", "ɹeɪn"]


def test_one_backend_per_language_is_reused():
    to_ipa("one", "en")
    backend = phonemes.espeak_backend("en")
    to_ipa("two", "en-US")
    assert phonemes.espeak_backend("en") is backend


@pytest.mark.parametrize(
    "language,text,expected_part",
    [("es", "te quiero mucho", "kjeɾo"), ("de", "ich liebe dich", "libə"), ("fr", "je t'aime", "ʒə"),
     ("ru", "я люблю тебя", "ubɭu"), ("it", "ti amo", "amo"), ("pt", "eu te amo", "tʃj am")],
)  # fmt: skip
def test_other_languages_use_their_espeak_voice(language, text, expected_part):
    assert expected_part in to_ipa(text, language)


def test_unknown_language_is_an_error_not_english():
    with pytest.raises(ValueError, match="no voice"):
        to_ipa("hello", "xx-nonexistent")


def test_chinese_hanzi_and_pinyin_meet():
    hanzi = to_ipa("我爱你中国，月亮代表我的心", "zh")
    assert hanzi == "wo ai ni ʈʂʊŋ kwo yɛ ljaŋ tai pjau wo tɤ ɕin"
    assert phoneme_key(
        to_ipa("wo3 ai4 ni3 zhong1 guo2 yue4 liang4 dai4 biao3 wo3 de5 xin1", "zh")
    ) == phoneme_key(hanzi)
    assert phoneme_key(to_ipa("wǒ ài nǐ zhōngguó", "zh")) == phoneme_key(to_ipa("我爱你中国", "zh"))
    # A recogniser that writes a homophone still gives the same phonemes.
    assert to_ipa("我爱你", "zh") == to_ipa("我碍妳", "zh")
    assert [pinyin_to_ipa(s) for s in ("shi4", "zi", "xue", "lü", "qu", "yuan", "wen", "bo")] == [
        "ʂɨ", "tsɨ", "ɕyɛ", "ly", "tɕʰy", "yɛn", "wən", "po",
    ]  # fmt: skip
    assert "beɪbi" in to_ipa("我爱你 baby", "zh")  # English words inside Chinese lyrics


def test_japanese_kanji_kana_and_romaji_meet():
    kanji = to_ipa("桜の花が咲いている", "ja")
    kana = to_ipa("さくらのはながさいている", "ja")
    romaji = to_ipa("sakura no hana ga saite iru", "ja")
    assert (
        phoneme_key(kanji) == phoneme_key(kana) == phoneme_key(romaji) == "sakɯɾanohanagasaiteiɾɯ"
    )
    # は as a particle is 'wa', long vowels and small tsu go, like every length mark.
    assert phoneme_key(to_ipa("東京へ行きます", "ja")) == phoneme_key(
        to_ipa("toukyou e ikimasu", "ja")
    )
    assert kana_to_romaji("ちょっと シャツ ファン") == "choto shatsu fan"


def test_korean_rules_and_romanisation():
    assert hangul_to_ipa("사랑해") == "saɾaŋhɛ"
    assert hangul_to_ipa("국물") == "kuŋmul"  # nasalisation
    assert hangul_to_ipa("신라") == "ɕilla"  # lateralisation
    assert hangul_to_ipa("읽어") == "ilkʌ"  # a cluster carries its second consonant over
    assert hangul_to_ipa("좋아") == "tɕoa"  # ㅎ falls silent before a vowel
    assert phoneme_key(to_ipa("사랑해요 안녕하세요", "ko")) == phoneme_key(
        to_ipa("saranghaeyo annyeonghaseyo", "ko")
    )
