"""The Node client's TypeScript declarations (sdk/node/src/client.d.ts): generated from the JSDoc of client.js by
`npm run types`, committed, and real types, so that a TypeScript caller's mistakes fail its compile."""

from __future__ import annotations

import subprocess
from pathlib import Path

from support.node import NODE_SDK, node_executable

TSC = NODE_SDK / "node_modules" / "typescript" / "bin" / "tsc"
# What `npm run typecheck-examples` passes to tsc besides the files.
CHECK = ["--noEmit", "--strict", "--module", "nodenext", "--moduleResolution", "nodenext", "--target", "es2022"]
CHECK += ["--skipLibCheck", "--pretty", "false"]


def _tsc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [node_executable(), str(TSC), *args], cwd=NODE_SDK, capture_output=True, text=True, timeout=120
    )


def test_the_committed_declarations_are_what_client_js_produces(tmp_path: Path):
    """tsconfig.json type-checks client.js strictly and emits its declarations: both must hold for the commit."""
    result = _tsc("-p", "tsconfig.json", "--outDir", str(tmp_path), "--pretty", "false")
    assert result.returncode == 0, f"client.js does not type-check:\n{result.stdout}{result.stderr}"
    emitted = (tmp_path / "client.d.ts").read_text()
    assert "export function createPlatformClient(" in emitted
    assert emitted == (NODE_SDK / "src" / "client.d.ts").read_text(), (
        "sdk/node/src/client.d.ts is stale: run `npm run types --prefix sdk/node` and commit it"
    )


def test_a_typescript_caller_gets_types_that_catch_its_mistakes(tmp_path: Path):
    """The example compiles through the package's own name; a caller passing a wrong type or an unknown option, or
    reading a field that does not exist, gets a compile error at that line."""
    wrong = tmp_path / "wrong.mts"  # an ES module, as a Node caller of an ES module package is
    client = (NODE_SDK / "src" / "client.js").as_posix()
    wrong.write_text(
        f'import {{ createPlatformClient }} from "{client}";\n'
        'const platform = createPlatformClient({ address: "127.0.0.1:50051", token: "t" });\n'
        'await platform.createJob({ framework: "timm", model: "resnet10t", epochs: "3" });\n'
        'await platform.createJob({ framework: "timm", model: "resnet10t", epoch: 3 });\n'
        'const { job } = await platform.getJob("id");\n'
        "console.log(job?.jobID);\n"
    )
    result = _tsc(*CHECK, "examples/typed.ts", str(wrong))
    errors = [line for line in result.stdout.splitlines() if ": error TS" in line]
    assert not [line for line in errors if "typed.ts" in line], result.stdout
    by_line: dict[str, str] = {}
    for line in errors:
        if "wrong.mts(" in line:
            number = line.split("wrong.mts(")[1].split(",")[0]
            by_line[number] = by_line.get(number, "") + line
    assert set(by_line) == {"3", "4", "6"}, result.stdout
    assert "'string' is not assignable to type 'number'" in by_line.get("3", ""), result.stdout
    assert "'epoch' does not exist" in by_line.get("4", ""), result.stdout
    assert "'jobID' does not exist" in by_line.get("6", ""), result.stdout
    assert result.returncode != 0
