"""Text -> IPA phonemes, normalised so that a transcript and a lyric sheet meet on the same string.

- Most languages: phonemizer over espeak-ng, one `EspeakBackend` per language, built once and
  reused (building one loads a copy of the library). espeak-ng comes from the espeakng-loader
  wheel when installed (no root needed), else from the system package.
- Chinese: pypinyin reads the hanzi (espeak-ng reads them poorly); pinyin -> IPA by table. A
  romanised (pinyin) text goes through the same table, so both forms meet.
- Japanese: fugashi with the bundled unidic-lite dictionary gives each word's pronunciation in
  katakana (は as ワ, long vowels as ー); kana -> Hepburn-style romaji -> IPA by rules. A text
  already in romaji takes the last step only.
- Korean: Hangul syllables decomposed arithmetically into jamo, then the main pronunciation
  rules (coda neutralisation, liaison, nasalisation, lateralisation, aspiration with ㅎ) ->
  IPA; a romanised (Revised Romanisation) text is read with rules over the same inventory.

Normalisation drops what singers and recognisers do not agree on: stress and length marks,
tones, diacritics, punctuation and section tags such as `[Chorus]`.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Sequence

# Bump when the output of `to_ipa` changes: stored IPA and signatures depend on it.
PHONEMES_VERSION = 1

_ESPEAK_VOICES = {
    "en": "en-us",
    "fr": "fr-fr",
    "pt": "pt-br",
    "zh": "cmn",
    "yue": "yue",
    "vi": "vi",
    "fa": "fa",
}
_LANGUAGE_NAMES = {
    "english": "en", "chinese": "zh", "mandarin": "zh", "japanese": "ja", "korean": "ko",
    "spanish": "es", "german": "de", "french": "fr", "portuguese": "pt", "italian": "it",
    "russian": "ru", "cmn": "zh", "jpn": "ja", "kor": "ko", "eng": "en",
}  # fmt: skip

_SECTION_TAG = re.compile(r"\[[^\]]*\]|\{[^}]*\}|<[^>]*>")
_SECTION_LINE = re.compile(
    r"^\s*\(?\s*(intro|verse|pre-?chorus|chorus|hook|bridge|outro|refrain|interlude|instrumental|"
    r"break|solo|inst|x\d+|\d+x)\s*\d*\s*\)?\s*:?\s*$",
    re.IGNORECASE | re.MULTILINE,
)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\uff66-\uff9f]")
_HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f'’:]+")

_lock = threading.Lock()
_backends: dict[str, object] = {}
_tagger = None


def normalise_language(language: str | None) -> str:
    """'en-US', 'English', 'eng' -> 'en'; None or '' -> 'en'."""
    if not language:
        return "en"
    code = language.strip().lower().replace("_", "-")
    code = _LANGUAGE_NAMES.get(code, code)
    if code.startswith("zh"):
        return "zh"
    return code.split("-")[0]


def strip_section_tags(text: str) -> str:
    """Drop `[Chorus]`-style tags and lines that only name a section ('Verse 2:')."""
    return _SECTION_LINE.sub(" ", _SECTION_TAG.sub(" ", text))


def normalise_ipa(ipa: str) -> str:
    """Lowercase IPA without stress, length, tones, diacritics or punctuation; single spaces."""
    ipa = unicodedata.normalize("NFC", ipa.lower())
    out = []
    for ch in ipa:
        if ch in "ˈˌːˑ˘.‿͡-_|‖" or ch.isdigit():
            continue
        category = unicodedata.category(ch)
        if category.startswith("M") or category.startswith("P") or category.startswith("S"):
            continue
        if ch in "ʰʲʷ":  # aspiration / palatalisation marks are letters (Lm): recognisers
            continue  # drop them more often than not
        out.append(_EQUIVALENT.get(ch, ch) if not ch.isspace() else " ")
    return " ".join("".join(out).split())


_EQUIVALENT = {"ɡ": "g", "ɚ": "ər", "ɝ": "ɜr", "ɫ": "l", "ᵻ": "ɪ", "ɐ": "a"}


def phoneme_key(ipa: str) -> str:
    """The string that is shingled and aligned: normalised IPA without word boundaries
    (recognisers and espeak-ng split words differently, e.g. 'in the' vs 'ɪnðə')."""
    return ipa.replace(" ", "")


def to_ipa(text: str, language: str | None = "en") -> str:
    return to_ipa_batch([text], language)[0]


def to_ipa_batch(texts: Sequence[str], language: str | None = "en") -> list[str]:
    """Normalised IPA (words separated by single spaces) of each text, read in `language`."""
    lang = normalise_language(language)
    cleaned = [strip_section_tags(t or "") for t in texts]
    if lang == "zh":
        raw = [_chinese_ipa(t) for t in cleaned]
    elif lang == "ja":
        raw = [_japanese_ipa(t) for t in cleaned]
    elif lang == "ko":
        raw = [_korean_ipa(t) for t in cleaned]
    else:
        raw = espeak_ipa(cleaned, lang)
    return [normalise_ipa(r) for r in raw]


# -- espeak-ng ---------------------------------------------------------------------------------
def _configure_espeak() -> None:
    from phonemizer.backend.espeak.wrapper import EspeakWrapper

    try:
        import espeakng_loader
    except ImportError:  # fall back to a system espeak-ng (apt-get install espeak-ng)
        return
    EspeakWrapper.set_library(espeakng_loader.get_library_path())
    EspeakWrapper.set_data_path(espeakng_loader.get_data_path())


def espeak_voice(language: str) -> str:
    return _ESPEAK_VOICES.get(language, language)


def espeak_backend(language: str):
    """The cached phonemizer EspeakBackend of one language (built on first use)."""
    voice = espeak_voice(language)
    backend = _backends.get(voice)
    if backend is None:
        from phonemizer.backend import EspeakBackend

        if not _backends:
            _configure_espeak()
        try:
            backend = EspeakBackend(voice, language_switch="remove-flags", words_mismatch="ignore")
        except RuntimeError as exc:
            raise ValueError(f"espeak-ng has no voice for language {language!r}: {exc}") from None
        _backends[voice] = backend
    return backend


def espeak_ipa(texts: Sequence[str], language: str) -> list[str]:
    from phonemizer.separator import Separator

    todo = [(i, t) for i, t in enumerate(texts) if t.strip()]
    out = [""] * len(texts)
    if not todo:
        return out
    with _lock:  # espeak-ng keeps global state: one caller at a time
        backend = espeak_backend(language)
        # One line per text: phonemizer maps lines to outputs one to one.
        lines = [" ".join(t.split()) for _, t in todo]
        phonemized = backend.phonemize(lines, separator=Separator(phone="", word=" "), strip=True)
    for (i, _), ipa in zip(todo, phonemized, strict=True):
        out[i] = ipa
    return out


def _mixed_script(text: str, native: re.Pattern[str], read_native, read_roman) -> str:
    """Read runs of the native script with `read_native`; Latin words with `read_roman` when
    the text has no native script at all (a romanised text), else as English."""
    has_native = bool(native.search(text))
    parts: list[str] = []
    for match in re.finditer(r"[A-Za-z\u00c0-\u024f'’:]+|[^\sA-Za-z\u00c0-\u024f'’:]+", text):
        piece = match.group(0)
        if _LATIN_WORD.fullmatch(piece):
            parts.append(espeak_ipa([piece], "en")[0] if has_native else read_roman(piece))
        else:
            parts.append(read_native(piece))
    return " ".join(p for p in parts if p)


# -- Chinese: pinyin -> IPA --------------------------------------------------------------------
_PINYIN_INITIALS = {
    "b": "p", "p": "pʰ", "m": "m", "f": "f", "d": "t", "t": "tʰ", "n": "n", "l": "l",
    "g": "k", "k": "kʰ", "h": "x", "j": "tɕ", "q": "tɕʰ", "x": "ɕ", "zh": "ʈʂ", "ch": "ʈʂʰ",
    "sh": "ʂ", "r": "ʐ", "z": "ts", "c": "tsʰ", "s": "s",
}  # fmt: skip
_PINYIN_FINALS = {
    "a": "a", "o": "wo", "e": "ɤ", "i": "i", "u": "u", "v": "y", "ai": "ai", "ei": "ei",
    "ao": "au", "ou": "ou", "an": "an", "en": "ən", "ang": "aŋ", "eng": "əŋ", "ong": "ʊŋ",
    "er": "ər", "ia": "ja", "ie": "jɛ", "iao": "jau", "iou": "jou", "ian": "jɛn", "in": "in",
    "iang": "jaŋ", "ing": "iŋ", "iong": "jʊŋ", "ua": "wa", "uo": "wo", "uai": "wai",
    "uei": "wei", "uan": "wan", "uen": "wən", "uang": "waŋ", "ueng": "wəŋ", "ve": "yɛ",
    "van": "yɛn", "vn": "yn", "m": "m", "n": "n", "ng": "ŋ", "ê": "ɛ",
}  # fmt: skip
_PINYIN_TONE_MARKS = str.maketrans("āáǎàēéěèīíǐìōóǒòūúǔùǖǘǚǜüńňǹḿ", "aaaaeeeeiiiioooouuuuvvvvvnnnm")


def _pinyin_canonical(syllable: str) -> tuple[str, str] | None:
    """Spelled pinyin syllable -> (initial, canonical final), or None if it is not pinyin."""
    s = syllable.lower().translate(_PINYIN_TONE_MARKS).replace("u:", "v").rstrip("012345")
    if not s:
        return None
    if s.startswith("y"):
        rest = s[1:]
        if rest.startswith("u"):
            s = "v" + rest[1:]
        elif rest.startswith("i"):
            s = rest
        else:
            s = "i" + rest
        initial, final = "", s
    elif s.startswith("w"):
        rest = s[1:]
        initial, final = "", (rest if rest.startswith("u") else "u" + rest)
    else:
        initial = (
            s[:2] if s[:2] in ("zh", "ch", "sh") else (s[0] if s[0] in _PINYIN_INITIALS else "")
        )
        final = s[len(initial) :]
        if initial in ("j", "q", "x") and final.startswith("u"):
            final = "v" + final[1:]
        final = {"iu": "iou", "ui": "uei", "un": "uen"}.get(final, final)
    final = {"ue": "ve"}.get(final, final)
    if final not in _PINYIN_FINALS:
        return None
    return initial, final


def pinyin_to_ipa(syllable: str) -> str | None:
    parsed = _pinyin_canonical(syllable)
    if parsed is None:
        return None
    initial, final = parsed
    if final == "i" and initial in ("z", "c", "s", "zh", "ch", "sh", "r"):
        vowel = "ɨ"  # the apical vowel of zi / shi
    elif final == "o" and initial in ("b", "p", "m", "f"):
        vowel = "o"
    else:
        vowel = _PINYIN_FINALS[final]
    return _PINYIN_INITIALS.get(initial, "") + vowel


def _split_pinyin_word(word: str) -> list[str] | None:
    """'woaini' -> ['wo', 'ai', 'ni'] by longest valid syllable first; None if not pinyin."""
    word = re.sub(r"[’':]", "", word.lower())
    out, i = [], 0
    while i < len(word):
        for j in range(min(len(word), i + 7), i, -1):
            piece = word[i:j]
            if j < len(word) and word[j].isdigit():
                piece, j = word[i : j + 1], j + 1
            if _pinyin_canonical(piece) is not None:
                out.append(piece)
                i = j
                break
        else:
            return None
    return out


def _pinyin_text_ipa(word: str) -> str:
    syllables = _split_pinyin_word(word)
    if syllables is None:  # not pinyin after all: an English word in a romanised line
        return espeak_ipa([word], "en")[0]
    return "".join(pinyin_to_ipa(s) or "" for s in syllables)


def _chinese_ipa(text: str) -> str:
    from pypinyin import Style, lazy_pinyin

    def read_hanzi(piece: str) -> str:
        syllables = lazy_pinyin(piece, style=Style.TONE3, errors=lambda chars: [" "])
        return " ".join(pinyin_to_ipa(s) or "" for s in syllables if s.strip())

    return _mixed_script(text, _CJK, read_hanzi, _pinyin_text_ipa)


# -- Japanese: kana -> romaji -> IPA -----------------------------------------------------------
_KANA_ROMAJI = {
    "ア": "a", "イ": "i", "ウ": "u", "エ": "e", "オ": "o", "カ": "ka", "キ": "ki", "ク": "ku",
    "ケ": "ke", "コ": "ko", "サ": "sa", "シ": "shi", "ス": "su", "セ": "se", "ソ": "so",
    "タ": "ta", "チ": "chi", "ツ": "tsu", "テ": "te", "ト": "to", "ナ": "na", "ニ": "ni",
    "ヌ": "nu", "ネ": "ne", "ノ": "no", "ハ": "ha", "ヒ": "hi", "フ": "fu", "ヘ": "he",
    "ホ": "ho", "マ": "ma", "ミ": "mi", "ム": "mu", "メ": "me", "モ": "mo", "ヤ": "ya",
    "ユ": "yu", "ヨ": "yo", "ラ": "ra", "リ": "ri", "ル": "ru", "レ": "re", "ロ": "ro",
    "ワ": "wa", "ヰ": "i", "ヱ": "e", "ヲ": "o", "ン": "n", "ガ": "ga", "ギ": "gi", "グ": "gu",
    "ゲ": "ge", "ゴ": "go", "ザ": "za", "ジ": "ji", "ズ": "zu", "ゼ": "ze", "ゾ": "zo",
    "ダ": "da", "ヂ": "ji", "ヅ": "zu", "デ": "de", "ド": "do", "バ": "ba", "ビ": "bi",
    "ブ": "bu", "ベ": "be", "ボ": "bo", "パ": "pa", "ピ": "pi", "プ": "pu", "ペ": "pe",
    "ポ": "po", "ヴ": "vu", "ァ": "a", "ィ": "i", "ゥ": "u", "ェ": "e", "ォ": "o", "ヮ": "wa",
    "ヵ": "ka", "ヶ": "ke",
}  # fmt: skip
_SMALL_Y = {"ャ": "a", "ュ": "u", "ョ": "o"}
_SMALL_VOWELS = {"ァ": "a", "ィ": "i", "ゥ": "u", "ェ": "e", "ォ": "o"}


def kana_to_romaji(kana: str) -> str:
    """Katakana or hiragana -> Hepburn-style romaji (long vowels and ッ dropped)."""
    import unicodedata as ud

    kata = "".join(
        chr(ord(c) + 0x60) if "\u3041" <= c <= "\u3096" else c for c in ud.normalize("NFKC", kana)
    )
    out: list[str] = []
    for ch in kata:
        if ch in _SMALL_Y and out and out[-1]:
            prev = out[-1]
            stem = prev[:-1]  # キ + ャ -> kya, シ + ャ -> sha, チ + ャ -> cha, ジ + ャ -> ja
            out[-1] = (stem if stem in ("sh", "ch", "j") else stem + "y") + _SMALL_Y[ch]
        elif ch in _SMALL_VOWELS and out and out[-1] and len(out[-1]) > 1:
            out[-1] = out[-1][:-1] + _SMALL_VOWELS[ch]  # フ + ァ -> fa, ティ -> ti
        elif ch in ("ッ", "ー"):
            continue  # gemination and length: dropped like every other length mark
        elif ch in _KANA_ROMAJI:
            out.append(_KANA_ROMAJI[ch])
        else:
            out.append(" ")
    return "".join(out)


_ROMAJI_RULES = [
    (r"[āâ]", "a"), (r"[īî]", "i"), (r"[ūû]", "u"), (r"[ēê]", "e"), (r"[ōô]", "o"),
    (r"n'", "n"), (r"([bcdfghjkmprstwz])\1", r"\1"), (r"tch", "ch"),
    (r"ou", "o"), (r"oo", "o"), (r"uu", "u"), (r"aa", "a"), (r"ii", "i"), (r"ee", "e"), (r"ei", "e"),
    (r"shi", "ɕi"), (r"sh", "ɕ"), (r"chi", "tɕi"), (r"ch", "tɕ"), (r"tsu", "tsɯ"), (r"fu", "ɸɯ"),
    (r"ji", "dʑi"), (r"j", "dʑ"), (r"dzu", "zu"), (r"hi", "çi"), (r"y", "j"), (r"r", "ɾ"),
    (r"u", "ɯ"), (r"g", "ɡ"),
]  # fmt: skip


def romaji_to_ipa(romaji: str) -> str:
    s = romaji.lower()
    for pattern, replacement in _ROMAJI_RULES:
        s = re.sub(pattern, replacement, s)
    return re.sub(r"[^a-zɕʑɸɯɾçɡʔ ]", "", s)


def _japanese_tagger():
    global _tagger
    if _tagger is None:
        import fugashi  # unidic-lite is its bundled dictionary

        _tagger = fugashi.Tagger()
    return _tagger


def _japanese_ipa(text: str) -> str:
    def read_japanese(piece: str) -> str:
        words = []
        with _lock:
            tagged = [
                (w.surface, getattr(w.feature, "pron", None) or getattr(w.feature, "kana", None))
                for w in _japanese_tagger()(piece)
            ]
        for surface, pron in tagged:
            reading = pron if pron and pron != "*" else surface
            words.append(romaji_to_ipa(kana_to_romaji(reading)))
        return " ".join(w for w in words if w.strip())

    return _mixed_script(
        text, re.compile(f"{_CJK.pattern}|{_KANA.pattern}"), read_japanese, romaji_to_ipa
    )


# -- Korean: Hangul -> jamo -> IPA with the main pronunciation rules ----------------------------
_KO_INITIALS = [
    "k",
    "k",
    "n",
    "t",
    "t",
    "ɾ",
    "m",
    "p",
    "p",
    "s",
    "s",
    "",
    "tɕ",
    "tɕ",
    "tɕʰ",
    "kʰ",
    "tʰ",
    "pʰ",
    "h",
]
_KO_VOWELS = [
    "a",
    "ɛ",
    "ja",
    "jɛ",
    "ʌ",
    "e",
    "jʌ",
    "je",
    "o",
    "wa",
    "wɛ",
    "we",
    "jo",
    "u",
    "wʌ",
    "we",
    "wi",
    "ju",
    "ɯ",
    "ɯi",
    "i",
]
# Each coda (jamo index 1..27): (its sound before a consonant or at the end; before a vowel,
# what stays as the coda and the consonant that moves over as the next onset, if any).
_KO_CODAS: list[tuple[str, str, str | None]] = [
    ("", "", None), ("k", "", "k"), ("k", "", "k"), ("k", "k", "s"), ("n", "", "n"),
    ("n", "n", "tɕ"), ("n", "", "n"), ("t", "", "t"), ("l", "", "ɾ"), ("k", "l", "k"),
    ("m", "l", "m"), ("l", "l", "p"), ("l", "l", "s"), ("l", "l", "tʰ"), ("p", "l", "pʰ"),
    ("l", "", "ɾ"), ("m", "", "m"), ("p", "", "p"), ("p", "p", "s"), ("t", "", "s"),
    ("t", "", "s"), ("ŋ", "ŋ", None), ("t", "", "tɕ"), ("t", "", "tɕʰ"), ("k", "", "kʰ"),
    ("t", "", "tʰ"), ("p", "", "pʰ"), ("t", "", None),
]  # fmt: skip
_KO_ASPIRATED = {"k": "kʰ", "t": "tʰ", "p": "pʰ", "tɕ": "tɕʰ"}
_KO_NASAL = {"k": "ŋ", "t": "n", "p": "m"}
_H_CODAS = {6, 15, 27}  # ㄶ ㅀ ㅎ
_SILENT_ONSET, _H_ONSET = 11, 18  # ㅇ, ㅎ


def _decompose(ch: str) -> tuple[int, int, int] | None:
    code = ord(ch) - 0xAC00
    if not 0 <= code < 11172:
        return None
    return code // 588, (code % 588) // 28, code % 28


def hangul_to_ipa(word: str) -> str:
    """One word of Hangul -> IPA, applying the rules that change what is heard the most."""
    syllables = [d for d in map(_decompose, word) if d is not None]
    onsets = [_KO_INITIALS[i] for i, _, _ in syllables]
    vowels = [_KO_VOWELS[v] for _, v, _ in syllables]
    codas = [""] * len(syllables)
    for n, (_, _, f) in enumerate(syllables):
        if f == 0:
            continue
        sound, kept, carried = _KO_CODAS[f]
        following = syllables[n + 1][0] if n + 1 < len(syllables) else None
        if following == _SILENT_ONSET:  # liaison: the coda moves over to the next syllable
            codas[n] = kept
            if carried is not None:
                onsets[n + 1] = carried
            continue
        if following == _H_ONSET and sound in _KO_ASPIRATED:  # 축하 -> tɕukʰa
            onsets[n + 1] = _KO_ASPIRATED[sound]
            continue
        if f in _H_CODAS and following is not None and onsets[n + 1] in _KO_ASPIRATED:
            onsets[n + 1] = _KO_ASPIRATED[onsets[n + 1]]  # 좋고 -> tɕokʰo
            codas[n] = "" if f == 27 else sound
            continue
        if following is not None and onsets[n + 1] in ("n", "m") and sound in _KO_NASAL:
            sound = _KO_NASAL[sound]  # 국물 -> kuŋmul
        if following is not None and onsets[n + 1] == "ɾ":
            if sound in ("l", "n"):
                sound, onsets[n + 1] = "l", "l"  # 신라 -> ɕilla
            else:
                sound, onsets[n + 1] = _KO_NASAL.get(sound, sound), "n"  # 국력 -> kuŋnjʌk
        codas[n] = sound
    out = []
    for onset, vowel, coda in zip(onsets, vowels, codas, strict=True):
        if onset == "s" and vowel.startswith(("i", "j", "wi")):
            onset = "ɕ"
        out.append(onset + vowel + coda)
    return "".join(out)


_RR_RULES = [
    ("yeo", "jʌ"), ("yae", "jɛ"), ("ye", "je"), ("ya", "ja"), ("yo", "jo"), ("yu", "ju"),
    ("wae", "wɛ"), ("weo", "wʌ"), ("wo", "wʌ"), ("we", "we"), ("wa", "wa"), ("wi", "wi"),
    ("oe", "we"), ("eo", "ʌ"), ("eu", "ɯ"), ("ui", "ɯi"), ("ae", "ɛ"),
    ("kk", "k"), ("tt", "t"), ("pp", "p"), ("ss", "s"), ("jj", "tɕ"), ("ch", "tɕʰ"),
    ("ng", "ŋ"), ("g", "k"), ("k", "kʰ"), ("d", "t"), ("t", "tʰ"), ("b", "p"), ("p", "pʰ"),
    ("j", "tɕ"), ("r", "ɾ"),
]  # fmt: skip


def romanised_korean_to_ipa(word: str) -> str:
    """Revised Romanisation -> IPA over the same inventory as `hangul_to_ipa` (approximate)."""
    s, out, i = word.lower(), [], 0
    while i < len(s):
        for pattern, ipa in _RR_RULES:
            if s.startswith(pattern, i):
                out.append(ipa)
                i += len(pattern)
                break
        else:
            out.append(s[i] if s[i].isalpha() else "")
            i += 1
    ipa = "".join(out)
    ipa = re.sub(r"(?<!l)l(?=[aeiouɛʌɯjw])", "ɾ", ipa)  # ㄹ is a flap between vowels
    return re.sub(r"s(?=[ij])", "ɕ", ipa)


def _korean_ipa(text: str) -> str:
    def read_hangul(piece: str) -> str:
        return " ".join(hangul_to_ipa(w) for w in re.findall(r"[\uac00-\ud7a3]+", piece))

    return _mixed_script(text, _HANGUL, read_hangul, romanised_korean_to_ipa)
