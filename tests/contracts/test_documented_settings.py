"""The settings documentation matches the code: every variable and flag a service reads is in its settings table
with the default the code has, every variable a table names is read, and every `TP_*` variable the code names is
somewhere in the docs.

The tables: README.md's "The dashboard" section (`tp-dashboard`), its "Running the backend" section (`tp-backend`,
the settings table and the Limits table), and docs/trainer_service.md's "Settings" (`tp-trainer-*`). A table row
names its variables in backticks in the column headed `variable` or `setting` (a flag in brackets there, or in a
column headed `flag`), and their defaults in the column headed `default`, in the same order.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
from trainingplatform_backend import settings as backend_settings
from trainingplatform_dashboard import settings as dashboard_settings
from trainingplatform_sdk import channel
from trainingplatform_sdk.trainer_service import settings as trainer_settings

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
TRAINER_DOC = ROOT / "docs" / "trainer_service.md"
VARIABLE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")


@dataclasses.dataclass(frozen=True)
class Service:
    name: str
    module: ModuleType
    settings_class: type
    add_arguments: Callable[[argparse.ArgumentParser], None]
    doc: Path
    section: str


SERVICES = [
    Service(
        "tp-backend",
        backend_settings,
        backend_settings.Settings,
        backend_settings.add_arguments,
        README,
        "## Running the backend",
    ),
    Service(
        "tp-dashboard",
        dashboard_settings,
        dashboard_settings.Settings,
        dashboard_settings.add_arguments,
        README,
        "## The dashboard",
    ),
    Service(
        "tp-trainer-*",
        trainer_settings,
        trainer_settings.TrainerSettings,
        lambda parser: trainer_settings.add_arguments(parser, "127.0.0.1:50061"),
        TRAINER_DOC,
        "## Settings",
    ),
]


@dataclasses.dataclass(frozen=True)
class Row:
    variables: list[str]
    flags: list[str]
    defaults: list[str]
    line: str


def section(doc: Path, heading: str) -> str:
    """The text of `doc` from `heading` to the next heading of the same level."""
    text = doc.read_text(encoding="utf-8")
    assert heading + "\n" in text, f"{doc.name} lost its section {heading!r}"
    level = heading.split(" ", 1)[0]
    body = text.split(heading + "\n", 1)[1]
    return re.split(rf"^{level} ", body, maxsplit=1, flags=re.MULTILINE)[0]


def settings_rows(text: str) -> list[Row]:
    """Every row of every Markdown table of `text` that has a variable column."""
    rows: list[Row] = []
    columns: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("|"):
            columns = {}
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not columns:
            columns = {cell.split(" ", 1)[0].lower(): index for index, cell in enumerate(cells)}
            continue
        if set(line) <= set("|- "):
            continue
        where = columns.get("variable", columns.get("setting"))
        if where is None or "default" not in columns:
            continue
        named = cells[where]
        flags = re.findall(r"`(--[a-z0-9-]+)`", named + (cells[columns["flag"]] if "flag" in columns else ""))
        variables = [v for v in re.findall(r"`([^`]+)`", named) if VARIABLE.fullmatch(v)]
        defaults = [part.strip() for part in re.split(r", | / ", cells[columns["default"]])]
        rows.append(Row(variables, flags, defaults, line))
    return rows


def read_variables(module: ModuleType) -> set[str]:
    """The environment variables a settings module reads: its string constants that are variable names."""
    tree = ast.parse(Path(module.__file__ or "").read_text(encoding="utf-8"))
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and VARIABLE.fullmatch(node.value)
    }


def field_defaults(service: Service) -> dict[str, object]:
    """Each variable's default, from the dataclass fields whose docstring starts with the variable's name."""
    tree = ast.parse(Path(service.module.__file__ or "").read_text(encoding="utf-8"))
    name = service.settings_class.__name__
    (klass,) = [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef) and node.name == name]
    defaults: dict[str, object] = {}
    fields = {field.name: field for field in dataclasses.fields(service.settings_class)}
    for statement, following in zip(klass.body, klass.body[1:], strict=False):
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        field = fields[statement.target.id]
        if field.default is dataclasses.MISSING or not isinstance(following, ast.Expr):
            continue
        docstring = following.value.value if isinstance(following.value, ast.Constant) else ""
        match = re.match(r"([A-Z][A-Z0-9_]+)[ :]", str(docstring))
        if match:
            defaults[match.group(1)] = field.default
    return defaults


def documented_value(text: str) -> object:
    """A default as a table shows it (`10,000`, `8 MiB`, `7 days`, `0 (off)`, `true`), as a number, a switch or a
    word; None for a description (`generated into ...`, `none`)."""
    text = text.strip().strip("`")
    text = re.sub(r" \(.*\)$", "", text).strip("`")
    units = {"KiB": 1024, "MiB": 1024**2, "days": 86400, "s": 1}
    number = re.fullmatch(r"([0-9][0-9,]*(?:\.[0-9]+)?)(?: (KiB|MiB|days|s))?", text)
    if number:
        return float(number.group(1).replace(",", "")) * units.get(number.group(2) or "s", 1)
    if text.lower() in ("true", "on", "yes", "false", "off", "no"):
        return text.lower() in ("true", "on", "yes")
    return text if re.fullmatch(r"[\w.:/-]+", text) and text.lower() != "none" else None


def code_value(value: object) -> object:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    return str(value)


@pytest.mark.parametrize("service", SERVICES, ids=lambda service: service.name)
def test_every_variable_a_service_reads_is_in_its_settings_table(service: Service) -> None:
    rows = settings_rows(section(service.doc, service.section))
    in_tables = {name for row in rows for name in re.findall(r"`([A-Z][A-Z0-9_]+)`", row.line)}
    missing = sorted(read_variables(service.module) - in_tables)
    assert not missing, f"{service.name} reads {missing}; add them to {service.doc.name}, {service.section!r}"


@pytest.mark.parametrize("service", SERVICES, ids=lambda service: service.name)
def test_every_flag_of_a_service_is_in_its_settings_table(service: Service) -> None:
    parser = argparse.ArgumentParser()
    service.add_arguments(parser)
    flags = {option for action in parser._actions for option in action.option_strings if option.startswith("--")}
    flags.discard("--help")
    documented = {flag for row in settings_rows(section(service.doc, service.section)) for flag in row.flags}
    missing = sorted(flags - documented)
    assert not missing, f"{service.name} --help has {missing}; add them to {service.doc.name}, {service.section!r}"


@pytest.mark.parametrize("service", SERVICES, ids=lambda service: service.name)
def test_every_documented_default_is_the_code_default(service: Service) -> None:
    defaults = field_defaults(service)
    wrong = []
    compared = set()
    for row in settings_rows(section(service.doc, service.section)):
        for variable, shown in zip(row.variables, row.defaults, strict=False):
            if variable not in defaults or code_value(defaults[variable]) in ("", "{}", "()"):
                continue
            value = documented_value(shown)
            if value is None:
                continue
            compared.add(variable)
            if value != code_value(defaults[variable]):
                wrong.append(f"{variable}: documented {shown!r}, the code's default is {defaults[variable]!r}")
    # the tables' layout still parses: most settings with a plain default are compared
    assert len(compared) >= len(defaults) // 2, f"only {sorted(compared)} of {sorted(defaults)} were compared"
    assert not wrong, f"{service.doc.name}, {service.section!r}:\n" + "\n".join(wrong)


def test_every_variable_a_settings_table_names_is_read() -> None:
    read = set().union(read_variables(channel), *(read_variables(service.module) for service in SERVICES))
    unknown = []
    for service in SERVICES:
        for row in settings_rows(section(service.doc, service.section)):
            unknown += [f"{service.doc.name}: {name}" for name in row.variables if name not in read]
    assert not unknown, f"documented, but no service reads them: {unknown}"


def test_every_tp_variable_the_code_names_is_documented() -> None:
    docs = "\n".join(path.read_text(encoding="utf-8") for path in [README, *sorted((ROOT / "docs").glob("*.md"))])
    named = set(re.findall(r"\b(TP_[A-Z0-9_]+)\b", docs))
    sources = [*ROOT.glob("sdk/src/**/*.py"), *ROOT.glob("services/*/src/**/*.py"), *ROOT.glob("deploy/docker/*.py")]
    missing: dict[str, str] = {}
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            text = node.value if isinstance(node, ast.Constant) else None
            if isinstance(text, str) and re.fullmatch(r"TP_[A-Z0-9_]+", text) and text not in named:
                missing.setdefault(text, str(path.relative_to(ROOT)))
    assert not missing, f"the code reads these, the docs never name them: {missing}"
