"""Not a task (test_ prefix): the sample's own test."""


def test_greeting():
    from tasks.hello import GREETING

    assert GREETING
