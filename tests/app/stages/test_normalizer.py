import pytest
from support_assistant.errors import InvalidInput
from support_assistant.stages.normalizer import Normalizer


def test_folds_unicode_whitespace_and_case():
    result = Normalizer().normalize("  \uff30\uff4f\uff44\u00a0stuck\t\n PENDING\u200b ")
    assert result.text == "Pod stuck PENDING"
    assert result.search_text == "pod stuck pending"
    assert not result.truncated


def test_control_characters_become_spaces():
    assert Normalizer().normalize("gpu\x00\x07quota").text == "gpu quota"


def test_caps_length_and_says_so():
    result = Normalizer(max_chars=10).normalize("a" * 25)
    assert result.text == "a" * 10
    assert result.truncated


@pytest.mark.parametrize("question", ["", "   ", "\x00\x01"])
def test_empty_after_normalization_is_invalid_input_naming_the_field(question):
    with pytest.raises(InvalidInput) as info:
        Normalizer().normalize(question)
    assert info.value.field == "question"
    assert info.value.status == 400
