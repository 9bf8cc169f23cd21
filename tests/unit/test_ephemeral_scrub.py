"""The stderr tail of a failed ephemeral child is logged scrubbed of every secret the child inherited: not only
``COGO_*`` values but any variable whose name looks secret, and URL passwords however they are written."""

from __future__ import annotations

import pytest

from workers.ephemeral import scrub


@pytest.mark.parametrize("var", ["OPENAI_API_KEY", "PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN",
                                 "mysql_passwd", "Google_Application_Credentials", "COGO_LLM_API_KEY"])
def test_the_value_of_every_variable_named_like_a_secret_is_scrubbed(var):
    env = {var: "s3cr3t-value", "HOME": "/home/app", "PATH": "/usr/bin"}
    scrubbed = scrub("boom: auth s3cr3t-value failed in /home/app", env)
    assert "s3cr3t-value" not in scrubbed
    assert scrubbed == f"boom: auth <{var}> failed in /home/app"


def test_a_url_password_is_scrubbed_percent_encoded_and_decoded_in_any_variable():
    env = {"DATABASE_URL": "postgresql://app:p%40ss%2Fw0rd@db:5432/app", "COGO_BROKER_URL": "amqp://u:plainpw@mq//"}
    text = "dsn postgresql://app:p%40ss%2Fw0rd@db:5432/app said: password 'p@ss/w0rd' rejected; amqp plainpw"
    scrubbed = scrub(text, env)
    assert "p%40ss%2Fw0rd" not in scrubbed and "p@ss/w0rd" not in scrubbed and "plainpw" not in scrubbed
    assert scrubbed.count("<password of DATABASE_URL>") == 2
    assert "<password of COGO_BROKER_URL>" in scrubbed
    assert "postgresql://app:" in scrubbed and "@db:5432/app" in scrubbed


def test_values_shorter_than_four_characters_are_left_alone():
    env = {"DEBUG_TOKEN": "1", "API_KEY": "abc", "REDIS_URL": "redis://:pw@redis:6379/0", "SESSION_KEY": "abcd"}
    text = "exit 1 after abc retries on redis://:pw@redis:6379/0 with abcd"
    assert scrub(text, env) == "exit 1 after abc retries on redis://:pw@redis:6379/0 with <SESSION_KEY>"


def test_variables_that_name_no_secret_and_hold_no_url_password_are_kept():
    env = {"HOME": "/home/app", "LANG": "C.UTF-8", "BROKER_URL": "redis://redis:6379/0", "BAD_URL": "http://[::1"}
    text = "in /home/app with C.UTF-8 on redis://redis:6379/0 and http://[::1"
    assert scrub(text, env) == text
