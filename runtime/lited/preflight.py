"""The second pass over a config (docs/config.md): what it names on this
machine, its `group`, every bundle against what `models.<name>` asks, the
CURVE key files. One pass shared by `lited config check`, `lited serve` and a
reload, and every problem reported together with its field path: a check that
passes is a start that does, and one run names every file to fix."""
from __future__ import annotations

import grp

from lited.config import Config, ConfigError, ModelSettings, model_choice_problem
from lited.errors import first_line


def machine_problems(config: Config) -> tuple:
    """({model name: its loaded bundle}, [problem by field path]); a bundle
    that does not load is missing from the first."""
    from lited.bundle import load_bundle
    from lited.keys import curve_problems

    problems = []
    if config.group is not None:
        try:
            grp.getgrnam(config.group)
        except KeyError:
            problems.append(f"group: no such group {config.group!r}")
    bundles = {}
    for name, directory in config.models.items():
        try:
            bundles[name] = load_bundle(directory)
        except Exception as exc:  # noqa: BLE001 - every bundle's problem is reported, whatever it is
            problems.append(f"models.{name}: {first_line(exc)}")
            continue
        problem = model_choice_problem(name, bundles[name], config.model_settings.get(name, ModelSettings()))
        if problem:
            problems.append(problem)
    if config.curve:
        problems += curve_problems(config.curve["server_secret"], config.curve["clients_dir"])
    return bundles, problems


def load_bundles(config: Config) -> dict:
    """{model name: bundle} for a config that can run here, else ConfigError
    with every problem of the second pass."""
    bundles, problems = machine_problems(config)
    if problems:
        raise ConfigError(str(config.path or "<config>"), problems)
    return bundles


def tcp_problems(config: Config, insecure_tcp: bool = False) -> list:
    """A tcp:// endpoint without CURVE keys, unless insecure TCP is asked for
    (the config's `insecure_tcp` or `lited serve --insecure-tcp`)."""
    problems = []
    for kind, endpoints in (("pub", config.pub), ("req", config.req)):
        tcp = [e for e in endpoints if e.startswith("tcp://")]
        if tcp and not config.curve and not (insecure_tcp or config.insecure_tcp):
            problems.append(f"endpoints.{kind}: {', '.join(tcp)}: TCP needs CURVE keys (curve:, see `lited keygen`) "
                            "or insecure_tcp: true (lited serve --insecure-tcp)")
    return problems
