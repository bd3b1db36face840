"""`train.launch`: further `accelerate launch` options, parsed without a shell, and the options synthir sets itself.

The params validator refuses a bad `train.launch` when params are read; `synthir.stage` builds the launch from the
same parse, so what was checked is what runs.
"""

from __future__ import annotations

import re
import shlex

from .errors import ConfigError, excerpt

_OPTION = re.compile(r"^--?[A-Za-z][A-Za-z0-9_-]*(=[A-Za-z0-9_.,:/@+-]*)?$")
_VALUE = re.compile(r"^[A-Za-z0-9_.,:/@+-]+$")

ACCELERATE_OPTIONS_FROM_PARAMS = (
    "--cpu",
    "--multi_gpu",
    "--num_processes",
    "--mixed_precision",
    "--num_machines",
    "--machine_rank",
    "--main_process_ip",
)
"""Options synthir sets from train.device, num_processes, num_machines, mixed_precision and the machine variables:
`train.launch` may not set them too."""


def launch_arguments(launch: str) -> list[str]:
    """`accelerate launch` options as an argument list: `--name`, `--name=value` or `--name value`, made of
    plain characters only, so nothing in them can reach a shell."""
    try:
        tokens = shlex.split(launch)
    except ValueError as error:
        raise ConfigError(f"not a list of accelerate options ({error})") from None
    previous_is_option = False
    for token in tokens:
        if _OPTION.match(token):
            previous_is_option = "=" not in token
        elif previous_is_option and _VALUE.match(token) and not token.startswith("-"):
            previous_is_option = False
        else:
            raise ConfigError(
                f"{excerpt(token)} is not an accelerate option (expected --name, --name=value or --name value, "
                f"letters, digits and _.,:/@+- only)"
            )
    return tokens


def option_value(tokens: list[str], option: str) -> str | None:
    """The value of `option` in an argument list (`--name value` or `--name=value`), None if absent."""
    for i, token in enumerate(tokens):
        name, equals, value = token.partition("=")
        if name == option:
            return value if equals else (tokens[i + 1] if i + 1 < len(tokens) else "")
    return None


def tcp_port(value: str, name: str) -> int:
    """`value` as a TCP port number; a ConfigError naming `name` if it is not one (1 to 65535)."""
    if not (value.isascii() and value.isdigit() and len(value) <= 5 and 0 < int(value) < 65536):
        raise ConfigError(f"{name}: {excerpt(value)} is not a TCP port (1 to 65535)")
    return int(value)


def check_launch(launch: str) -> list[str]:
    """`train.launch` as an argument list; a ConfigError if it is not plain accelerate options, sets an option
    synthir sets from params (`ACCELERATE_OPTIONS_FROM_PARAMS`) or names a bad --main_process_port."""
    tokens = launch_arguments(launch)
    owned = [t for t in tokens if t.partition("=")[0] in ACCELERATE_OPTIONS_FROM_PARAMS]
    if owned:
        raise ConfigError(
            f"{excerpt(owned[0])} is set by train.device, train.num_processes, train.num_machines and "
            "train.mixed_precision (machine rank and address by the environment), not by launch"
        )
    port = option_value(tokens, "--main_process_port")
    if port is not None:
        tcp_port(port, "--main_process_port")
    return tokens
