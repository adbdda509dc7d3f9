"""Parsers of setting values: each takes the raw string and returns the value or raises
ValueError saying what a valid value looks like (settings.py names the variable)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

DEVICES_HELP = "cpu, cuda, cuda:N or auto"


def url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http(s) URL with a host, e.g. http://localhost:8080")
    return value.rstrip("/")


def redis_url(value: str) -> str:
    if urlsplit(value).scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must start with redis://, rediss:// or unix://")
    return value


def positive_int(value: str) -> int:
    number = int(value)
    if not 0 < number < 2**53:
        raise ValueError("must be a positive integer")
    return number


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be 0 or a positive integer")
    return number


def positive_float(value: str) -> float:
    number = float(value)
    if not (number > 0 and math.isfinite(number)):
        raise ValueError("must be a positive, finite number")
    return number


def fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:  # also refuses NaN
        raise ValueError("must be a number between 0 and 1")
    return number


def device(value: str) -> str:
    value = value.strip().lower()
    if value in ("cpu", "cuda", "auto"):
        return value
    if value.startswith("cuda:") and value[5:].isdigit():
        return value
    raise ValueError(f"must be one of {DEVICES_HELP}")


def weights(value: str) -> str:
    value = value.strip()
    if value.lower() in ("coco", "imagenet", "none"):
        return value.lower()
    if not value:
        raise ValueError("must be coco, imagenet, none or the path of a checkpoint file")
    return value


def choice(*allowed: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        value = value.strip().lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
        return value

    return parse


def regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"is not a valid regular expression ({exc})") from None
    return value


def host_list(value: str) -> tuple[str, ...]:
    return tuple(item.strip().lower() for item in value.split(",") if item.strip())


def path(value: str) -> Path:
    return Path(value).expanduser()


def text(value: str) -> str:
    return value


def non_negative_float(value: str) -> float:
    number = float(value)
    if not (number >= 0 and math.isfinite(number)):
        raise ValueError("must be 0 or a positive, finite number")
    return number
