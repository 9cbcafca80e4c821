"""Our hand-trimmed protos must be a wire-compatible subset of Beam's.

Everything declared in our `.proto` files (messages, nested messages, fields,
enums, enum values, services, methods) is looked up by full name in the
descriptors that apache-beam's generated `_pb2` modules embed, and every
difference is listed. Beam declaring *more* than we do is fine (decoders skip
unknown fields); us declaring something Beam does not have, or declaring it
differently, is drift.

Our descriptor set comes from `BEAM_PROTO_DESCRIPTORS` (a file written by
`cargo run -p beam-proto --bin dump-descriptors FILE`) or, when that is unset,
from running that command here.

Checked against two apache-beam releases: the one in the project venv (the
version the Java side, Flink's job server and Prism are pinned to, see
scripts/versions.sh) and the newest on PyPI, read in a venv of its own
(`.cache/venv-beam-<version>`, made by scripts/setup-python.sh).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from conftest import REPO

# Beam's generated modules (attributes of apache_beam.portability.api) that
# hold the files we mirror. Their imports pull in
# the rest (schema, descriptor.proto, struct, ...).
BEAM_MODULES = [
    "endpoints_pb2",
    "beam_runner_api_pb2",
    "metrics_pb2",
    "beam_fn_api_pb2",
    "beam_provision_api_pb2",
    "beam_expansion_api_pb2",
    "beam_artifact_api_pb2",
    "schema_pb2",
    "external_transforms_pb2",
]

FDP = descriptor_pb2.FieldDescriptorProto
TYPE_NAMES = {v: k[len("TYPE_"):].lower() for k, v in FDP.Type.items()}
LABEL_NAMES = {v: k[len("LABEL_"):].lower() for k, v in FDP.Label.items()}


def _our_descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    path = os.environ.get("BEAM_PROTO_DESCRIPTORS")
    if path:
        data = Path(path).read_bytes()
    else:
        proc = subprocess.run(
            ["cargo", "run", "-q", "-p", "beam-proto", "--bin", "dump-descriptors"],
            cwd=REPO,
            capture_output=True,
            timeout=1800,
        )
        if proc.returncode != 0:
            pytest.fail(
                "dump-descriptors failed:\n" + proc.stderr.decode(errors="replace")
            )
        data = proc.stdout
    return descriptor_pb2.FileDescriptorSet.FromString(data)


# Run by the Python of the apache-beam release checked: prints that release's
# files (and everything they import) as a serialized FileDescriptorSet.
_DUMP_BEAM_FILES = """
import importlib, sys
from google.protobuf import descriptor_pb2
seen = {}
def add(fd):
    if fd.name in seen:
        return
    proto = descriptor_pb2.FileDescriptorProto()
    fd.CopyToProto(proto)
    seen[fd.name] = proto
    for dep in fd.dependencies:
        add(dep)
api = importlib.import_module("apache_beam.portability.api")
for name in sys.argv[1:]:
    add(getattr(api, name).DESCRIPTOR)
sys.stdout.buffer.write(descriptor_pb2.FileDescriptorSet(file=list(seen.values())).SerializeToString())
"""


def _versions_file(name):
    text = (REPO / "scripts" / "versions.sh").read_text()
    return re.search(rf'{name}="\$\{{{name}:-([^}}]+)\}}"', text).group(1)


PINNED = _versions_file("BEAM_VERSION")
NEWEST = _versions_file("BEAM_NEWEST_PYTHON")


def _python_with_beam(version) -> str:
    """This venv's Python if it has `version`, else a venv of its own."""
    import apache_beam

    if apache_beam.__version__ == version:
        return sys.executable
    proc = subprocess.run(
        [str(REPO / "scripts" / "setup-python.sh")], cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "BEAM_PYTHON_VERSION": version,
             "BEAM_RUST_VENV": str(REPO / ".cache" / f"venv-beam-{version}"),
             "BEAM_RUST_VENV_MINIMAL": "1"},
        timeout=1800)
    if proc.returncode != 0:
        pytest.fail(f"cannot make a venv with apache-beam {version}:\n{proc.stderr[-5000:]}")
    return proc.stdout.strip().splitlines()[-1] + "/bin/python"


def _beam_files(version) -> list:
    """FileDescriptorProtos of Beam `version`'s files and everything they import."""
    proc = subprocess.run([_python_with_beam(version), "-c", _DUMP_BEAM_FILES, *BEAM_MODULES],
                          capture_output=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"reading apache-beam {version}'s descriptors failed:\n"
                    + proc.stderr.decode(errors="replace")[-5000:])
    return list(descriptor_pb2.FileDescriptorSet.FromString(proc.stdout).file)


class Index:
    """Full name -> descriptor proto, for every message, enum and service."""

    def __init__(self, files, only_beam=False):
        self.messages = {}
        self.enums = {}
        self.services = {}
        self.file_of = {}
        for f in files:
            if only_beam and not f.package.startswith("org.apache.beam."):
                continue
            prefix = "." + f.package if f.package else ""
            for m in f.message_type:
                self._message(prefix, m, f.name)
            for e in f.enum_type:
                self.enums[f"{prefix}.{e.name}"] = e
                self.file_of[f"{prefix}.{e.name}"] = f.name
            for s in f.service:
                self.services[f"{prefix}.{s.name}"] = s
                self.file_of[f"{prefix}.{s.name}"] = f.name

    def _message(self, prefix, m, file_name):
        name = f"{prefix}.{m.name}"
        self.messages[name] = m
        self.file_of[name] = file_name
        for nested in m.nested_type:
            self._message(name, nested, file_name)
        for e in m.enum_type:
            self.enums[f"{name}.{e.name}"] = e
            self.file_of[f"{name}.{e.name}"] = file_name


def _presence(msg, field) -> str:
    """How a field's presence is tracked, which changes what goes on the wire."""
    if field.label == FDP.LABEL_REPEATED:
        return "repeated"
    if field.HasField("oneof_index"):
        oneof = msg.oneof_decl[field.oneof_index].name
        return "proto3 optional" if field.proto3_optional else f"oneof {oneof}"
    if field.type in (FDP.TYPE_MESSAGE, FDP.TYPE_GROUP):
        return "message"
    return "implicit"


def _describe(field) -> str:
    t = TYPE_NAMES[field.type]
    if field.type_name:
        t += f" {field.type_name}"
    return f"{LABEL_NAMES[field.label]} {t} = {field.number}"


def _in_reserved(msg, number) -> bool:
    return any(r.start <= number < r.end for r in msg.reserved_range)


def compare(ours: Index, beam: Index) -> list:
    drift = []
    for name, msg in sorted(ours.messages.items()):
        where = ours.file_of[name]
        theirs = beam.messages.get(name)
        if theirs is None:
            drift.append(f"message {name} ({where}): not in Beam")
            continue
        their_fields = {f.name: f for f in theirs.field}
        their_numbers = {f.number: f for f in theirs.field}
        for f in msg.field:
            label = f"field {name}.{f.name}"
            t = their_fields.get(f.name)
            if t is None:
                same_number = their_numbers.get(f.number)
                if same_number is not None:
                    drift.append(
                        f"{label} = {f.number}: Beam calls field {f.number} "
                        f"'{same_number.name}' ({_describe(same_number)})"
                    )
                elif _in_reserved(theirs, f.number):
                    drift.append(f"{label} = {f.number}: number is reserved in Beam")
                else:
                    drift.append(f"{label} = {f.number}: not in Beam")
                continue
            if f.number != t.number:
                drift.append(f"{label}: number {f.number}, Beam has {t.number}")
            if f.type != t.type:
                drift.append(
                    f"{label}: type {TYPE_NAMES[f.type]}, Beam has {TYPE_NAMES[t.type]}"
                )
            if f.label != t.label:
                drift.append(
                    f"{label}: label {LABEL_NAMES[f.label]}, Beam has {LABEL_NAMES[t.label]}"
                )
            if f.type_name != t.type_name:
                drift.append(
                    f"{label}: type_name {f.type_name or '-'}, Beam has {t.type_name or '-'}"
                )
            ours_p, theirs_p = _presence(msg, f), _presence(theirs, t)
            # Oneof names are not on the wire; presence semantics are.
            if ours_p.split()[0] != theirs_p.split()[0] or (
                ours_p == "proto3 optional"
            ) != (theirs_p == "proto3 optional"):
                drift.append(f"{label}: presence '{ours_p}', Beam has '{theirs_p}'")
    for name, enum in sorted(ours.enums.items()):
        theirs = beam.enums.get(name)
        if theirs is None:
            drift.append(f"enum {name} ({ours.file_of[name]}): not in Beam")
            continue
        their_values = {v.name: v.number for v in theirs.value}
        for v in enum.value:
            if v.name not in their_values:
                drift.append(f"enum value {name}.{v.name} = {v.number}: not in Beam")
            elif their_values[v.name] != v.number:
                drift.append(
                    f"enum value {name}.{v.name}: number {v.number}, "
                    f"Beam has {their_values[v.name]}"
                )
    for name, svc in sorted(ours.services.items()):
        theirs = beam.services.get(name)
        if theirs is None:
            drift.append(f"service {name} ({ours.file_of[name]}): not in Beam")
            continue
        their_methods = {m.name: m for m in theirs.method}
        for m in svc.method:
            label = f"method {name}/{m.name}"
            t = their_methods.get(m.name)
            if t is None:
                drift.append(f"{label}: not in Beam")
                continue
            for attr in ("input_type", "output_type", "client_streaming", "server_streaming"):
                if getattr(m, attr) != getattr(t, attr):
                    drift.append(
                        f"{label}: {attr} {getattr(m, attr)}, Beam has {getattr(t, attr)}"
                    )
    return drift


@pytest.fixture(scope="module")
def our_descriptors():
    return _our_descriptor_set()


@pytest.fixture(scope="module", params=sorted({PINNED, NEWEST}))
def indexes(request, our_descriptors):
    ours = Index(our_descriptors.file, only_beam=True)
    beam = Index(_beam_files(request.param))
    return ours, beam


def test_our_protos_are_a_subset_of_beams(indexes):
    ours, beam = indexes
    assert ours.messages, "our descriptor set holds no Beam messages"
    drift = compare(ours, beam)
    assert not drift, (
        f"{len(drift)} difference(s) between our protos and apache-beam's:\n  "
        + "\n  ".join(drift)
    )


def test_services_we_serve_or_call_are_declared(indexes):
    """The gRPC paths the worker depends on must exist in our files."""
    ours, _ = indexes
    need = {
        ".org.apache.beam.model.fn_execution.v1.BeamFnExternalWorkerPool": {
            "StartWorker",
            "StopWorker",
        },
        ".org.apache.beam.model.fn_execution.v1.BeamFnControl": {
            "Control",
            "GetProcessBundleDescriptor",
        },
        ".org.apache.beam.model.fn_execution.v1.BeamFnData": {"Data"},
        ".org.apache.beam.model.expansion.v1.ExpansionService": {"Expand"},
    }
    missing = [
        f"{svc}/{m}"
        for svc, methods in need.items()
        for m in sorted(methods - {x.name for x in ours.services.get(svc, _Empty).method})
    ]
    assert not missing, "missing gRPC methods: " + ", ".join(missing)


# Messages the expansion service copies from the request into its response.
# The SDK parses them again (Python rebuilds the output PCollection's coder and
# windowing from the response), and prost drops fields we do not declare, so
# these must be complete, including everything they contain.
ECHOED_BY_EXPANSION = [
    ".org.apache.beam.model.pipeline.v1.Coder",
    ".org.apache.beam.model.pipeline.v1.WindowingStrategy",
]


def _opaque_messages() -> set:
    """Messages that proto/build.rs maps to `OpaqueMessage`, which keeps every
    received field verbatim, so their declared fields do not matter."""
    build_rs = (REPO / "proto" / "build.rs").read_text()
    return set(
        re.findall(r'extern_path\(\s*"([^"]+)",\s*"crate::opaque::OpaqueMessage"', build_rs)
    )


def test_messages_the_expansion_service_echoes_are_complete(indexes):
    ours, beam = indexes
    opaque = _opaque_messages()
    todo, seen, missing = list(ECHOED_BY_EXPANSION), set(), []
    while todo:
        name = todo.pop()
        if name in seen or name in opaque:
            continue
        seen.add(name)
        theirs = beam.messages[name]
        mine = ours.messages.get(name)
        if mine is None:
            missing.append(f"message {name}: not declared")
        declared = {(f.name, f.number) for f in mine.field} if mine else set()
        for f in theirs.field:
            if mine is not None and (f.name, f.number) not in declared:
                missing.append(f"field {name}.{f.name} = {f.number} ({_describe(f)}): not declared")
            if f.type == FDP.TYPE_MESSAGE and f.type_name in beam.messages:
                todo.append(f.type_name)
    assert not missing, (
        "the expansion service would return these messages with fields dropped:\n  "
        + "\n  ".join(sorted(missing))
    )


class _Empty:
    method = ()


def test_the_checker_catches_drift():
    """A tampered copy of a Beam message must be reported field by field."""
    beam = Index(_beam_files(PINNED))
    name = ".org.apache.beam.model.pipeline.v1.FunctionSpec"
    spec = descriptor_pb2.DescriptorProto()
    spec.CopyFrom(beam.messages[name])
    spec.field[[f.name for f in spec.field].index("payload")].number = 2
    extra = spec.field.add(name="bogus", number=99, type=FDP.TYPE_STRING, label=FDP.LABEL_OPTIONAL)
    assert extra.name == "bogus"
    f = descriptor_pb2.FileDescriptorProto(
        name="x.proto", package="org.apache.beam.model.pipeline.v1", syntax="proto3"
    )
    f.message_type.add().CopyFrom(spec)
    drift = compare(Index([f]), beam)
    assert any("FunctionSpec.payload: number 2, Beam has 3" in d for d in drift), drift
    assert any("FunctionSpec.bogus = 99: not in Beam" in d for d in drift), drift
