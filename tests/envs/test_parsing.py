import pytest

from turnrl.envs.parsing import InvalidReply, extract_command


@pytest.mark.parametrize("reply, command", [
    ("go north", "go north"),
    ("  Go   North.  ", "go north"),
    ("> take coin", "take coin"),
    ("`open door`", "open door"),
    ("I see a door.\nopen door", "open door"),
    ("Thought: the key is here.\nAction: take key\n", "take key"),
    ("action: look. then more text\nlast line", "look. then more text"),
    ("Action: go west Action: go east", "go east"),
])
def test_extract(reply, command):
    assert extract_command(reply) == command


@pytest.mark.parametrize("reply", ["", "   \n\t", "!!!", "take ключ", "go\x00north", "a " * 300])
def test_invalid(reply):
    with pytest.raises(InvalidReply):
        extract_command(reply)
