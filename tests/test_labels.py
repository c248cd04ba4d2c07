import pytest

from embed.labels import clean_breed_name


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("n02085620-Chihuahua", "chihuahua"),
        ("n02096294-Australian_terrier", "australian_terrier"),
        ("n02110958-pug", "pug"),
        ("Golden Retriever", "golden_retriever"),
        ("old-english  sheepdog", "old_english_sheepdog"),
        ("beagle", "beagle"),
    ],
)
def test_clean_breed_name(raw: str, clean: str) -> None:
    assert clean_breed_name(raw) == clean
