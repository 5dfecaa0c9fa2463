"""Rendering manifest templates: Gramine's globals, -D defines, errors with locations."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from geode.errors import ManifestError
from geode.manifest.render import ldd, parse_toml, python_get_sys_path, render
from geode.manifest.runtimedir import host_runtime_libraries

NAME = "app.manifest.template"


@pytest.fixture(autouse=True)
def libdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    target = tmp_path / "pkglib"
    monkeypatch.setenv("GEODE_PKGLIBDIR", str(target))
    return target


def r(template: str, **defines: str) -> str:
    return render(template, defines=defines, name=NAME)


def host_libc() -> str:
    out = subprocess.run(["ldd", "/bin/ls"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0] == "libc.so.6":
            return fields[2]
    raise AssertionError(out)


def test_python_globals_are_sysconfig() -> None:
    paths = sysconfig.get_paths()
    assert r("{{ python.stdlib }}") == paths["stdlib"]
    assert r("{{ python.platstdlib }}") == paths["platstdlib"]
    assert r("{{ python.purelib }}") == paths["purelib"]
    assert r("{{ python.ext_suffix }}") == sysconfig.get_config_var("EXT_SUFFIX")
    assert r("{{ python.get_config_var('VERSION') }}") == sysconfig.get_config_var("VERSION")
    assert r("{{ python.get_path('scripts') }}") == sysconfig.get_path("scripts")
    assert r("{{ python.get_paths()['include'] }}") == paths["include"]
    assert r("{{ python.implementation.name }}") == sys.implementation.name
    distlib = Path(sysconfig.get_path("stdlib", vars={"py_version_short": "3"})) / "dist-packages"
    assert r("{{ python.distlib }}") == str(distlib)
    # Paths are pathlib objects, as in Gramine (templates call .is_dir() etc.).
    assert r("{{ python.stdlib.is_dir() }}") == "True"


def test_python_get_sys_path() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "import sys; print('\\n'.join(p for p in sys.path if p))"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()
    existing = [Path(p) for p in out if Path(p).exists()]
    assert python_get_sys_path(sys.executable) == existing
    assert python_get_sys_path(sys.executable, include_nonexisting=True) == [Path(p) for p in out]
    rendered = r("{% for p in python.get_sys_path(exe) %}{{ p }}\n{% endfor %}", exe=sys.executable)
    assert rendered.splitlines() == [str(p) for p in existing]


def test_python_get_sys_path_missing_interpreter() -> None:
    with pytest.raises(ManifestError, match=r"app.manifest.template:1: .*/no/such/python"):
        r("{{ python.get_sys_path('/no/such/python') }}")


def test_gramine_globals(libdir: Path) -> None:
    assert r("{{ gramine.pkglibdir }}") == str(libdir)
    runtime = r("{{ gramine.runtimedir() }}")
    assert runtime == str((libdir / "runtime" / "glibc").resolve())
    assert r("{{ gramine.runtimedir }}") == runtime
    assert r("{{ gramine.runtimedir('glibc') / 'libc.so.6' }}") == runtime + "/libc.so.6"
    assert r("{{ gramine.runtimedir / 'libc.so.6' }}") == runtime + "/libc.so.6"
    assert (Path(runtime) / "libc.so.6").is_file()
    libos = Path(r("{{ gramine.libos }}"))
    assert libos.parent == libdir and libos.is_file()
    assert r("{{ libc }}") == "glibc"


def test_runtimedir_in_a_template_trusts_the_host_runtime(libdir: Path) -> None:
    runtime = Path(r("{{ gramine.runtimedir() }}"))
    for name, source in host_runtime_libraries().items():
        assert (runtime / name).read_bytes() == source.read_bytes()


def test_env_global(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEODE_TEST_VALUE", "x y")
    assert r("{{ env.GEODE_TEST_VALUE }}|{{ env['GEODE_TEST_VALUE'] }}") == "x y|x y"
    assert r("{{ env.get('GEODE_UNSET_VAR', 'dflt') }}") == "dflt"
    monkeypatch.delenv("GEODE_UNSET_VAR", raising=False)
    with pytest.raises(ManifestError) as err:
        r("a = 1\nb = '{{ env.GEODE_UNSET_VAR }}'\n")
    assert str(err.value) == (
        f"{NAME}:2: undefined environment variable 'GEODE_UNSET_VAR' (env.GEODE_UNSET_VAR)"
    )


def test_ldd_of_ls_includes_libc() -> None:
    libs = ldd("/bin/ls")
    assert host_libc() in libs
    assert libs == sorted(set(libs))
    assert all(lib.startswith("/") for lib in libs)
    assert not any("vdso" in lib for lib in libs)
    both = ldd("/bin/ls", Path("/bin/sh"))
    assert set(libs) <= set(both) and both == sorted(set(both))
    rendered = r("{% for lib in ldd('/bin/ls') %}{{ lib }}\n{% endfor %}")
    assert rendered.splitlines() == libs


def test_ldd_errors_name_the_binary(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as err:
        r("x = 1\n{{ ldd('/no/such/binary') }}\n")
    assert str(err.value) == f"{NAME}:2: ldd('/no/such/binary'): no such file"
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(ManifestError, match=r"ldd\('.*script.sh'\): not an ELF binary"):
        ldd(script)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_ldd_of_static_binaries(tmp_path: Path) -> None:
    src = tmp_path / "main.c"
    src.write_text("int main(void) { return 0; }\n")
    static = tmp_path / "static"
    built = subprocess.run(["gcc", "-static", "-no-pie", "-o", static, src], capture_output=True)
    if built.returncode != 0:
        pytest.skip("no static libc to link against")
    # Gramine's ldd() fails on a classic static binary (ldd exits with an error) ...
    with pytest.raises(ManifestError, match=r"statically linked"):
        ldd(static)
    # ... and yields nothing for a static-pie one (ldd prints "statically linked", exit 0).
    spie = tmp_path / "static-pie"
    if subprocess.run(["gcc", "-static-pie", "-o", spie, src], capture_output=True).returncode:
        pytest.skip("no static-pie support")
    assert ldd(spie) == []


def test_defines_are_variables() -> None:
    template = 'libos.entrypoint = "{{ entrypoint }}"\nloader.log_level = "{{ log_level }}"\n'
    out = r(template, entrypoint="/usr/bin/python3", log_level="error")
    assert out == 'libos.entrypoint = "/usr/bin/python3"\nloader.log_level = "error"\n'
    # A define overrides a global of the same name, as in Gramine.
    assert r("{{ libc }}", libc="musl") == "musl"


def test_trailing_newline_and_no_autoescape() -> None:
    assert r("a = 1\n") == "a = 1\n"
    assert r("a = 1\n\n") == "a = 1\n\n"
    assert r("{{ '<&>\"' }}") == "<&>\""


def test_undefined_variable_names_it_and_the_line() -> None:
    template = "# comment\nlibos.entrypoint = \"/x\"\nloader.argv = [\"{{ argv0 }}\"]\n"
    with pytest.raises(ManifestError) as err:
        render(template, defines={}, name="python.manifest.template")
    assert str(err.value) == "python.manifest.template:3: undefined variable 'argv0'"


def test_undefined_attribute() -> None:
    with pytest.raises(ManifestError, match=rf"^{NAME}:1: undefined attribute 'nope'"):
        r("{{ python.nope }}")


def test_syntax_error_has_line() -> None:
    with pytest.raises(ManifestError, match=rf"^{NAME}:3: template syntax error"):
        r("a = 1\nb = 2\n{% for x in %}\n{% endfor %}\n")


def test_expression_error_has_line() -> None:
    with pytest.raises(ManifestError, match=rf"^{NAME}:2: .*ZeroDivisionError"):
        r("a = 1\nb = {{ 1 // 0 }}\n")


def test_include_from_search_dirs(tmp_path: Path) -> None:
    inc = tmp_path / "inc"
    inc.mkdir()
    (inc / "common.toml").write_text('loader.log_level = "{{ log_level }}"\n')
    out = render('{% include "common.toml" %}a = 1\n', defines={"log_level": "debug"},
                 name=NAME, search_dirs=[inc])
    assert out == 'loader.log_level = "debug"\na = 1\n'
    (inc / "broken.toml").write_text("x = 1\ny = {{ missing }}\n")
    with pytest.raises(ManifestError) as err:
        render('{% include "broken.toml" %}\n', defines={}, name=NAME, search_dirs=[inc])
    assert str(err.value) == f"{inc / 'broken.toml'}:2: undefined variable 'missing'"
    with pytest.raises(ManifestError, match="included template not found: nope.toml"):
        render('{% include "nope.toml" %}', defines={}, name=NAME, search_dirs=[inc])


def test_parse_toml_ok_and_errors() -> None:
    assert parse_toml('a.b = "c"\n[sgx]\ndebug = true\n', name=NAME) == {
        "a": {"b": "c"}, "sgx": {"debug": True},
    }
    with pytest.raises(ManifestError) as err:
        parse_toml('a = 1\nloader.env.X = oops\n', name=NAME)
    assert str(err.value).startswith(f"{NAME}:2:16: invalid TOML after rendering")
    assert "loader.env.X = oops" in str(err.value)
    with pytest.raises(ManifestError, match=rf"^{NAME}:2:\d+: .*overwrite"):
        parse_toml("a = 1\na = 2\n", name=NAME)


def test_render_then_parse_a_gramine_style_template(libdir: Path, tmp_path: Path) -> None:
    template = tmp_path / "ls.manifest.template"
    template.write_text(
        '# a Gramine-style manifest\n'
        'loader.entrypoint.uri = "file:{{ gramine.libos }}"\n'
        'libos.entrypoint = "{{ entrypoint }}"\n'
        'loader.env.LD_LIBRARY_PATH = "/lib:{{ arch_libdir }}"\n'
        'fs.mounts = [\n'
        '  { path = "/lib", uri = "file:{{ gramine.runtimedir() }}" },\n'
        '  { path = "{{ entrypoint }}", uri = "file:{{ entrypoint }}" },\n'
        ']\n'
        'sgx.trusted_files = [\n'
        '  "file:{{ entrypoint }}",\n'
        '  "file:{{ gramine.runtimedir() }}/",\n'
        '{% for lib in ldd(entrypoint) %}  "file:{{ lib }}",\n{% endfor %}'
        ']\n'
    )
    text = render(template.read_text(), name=str(template),
                  defines={"entrypoint": "/bin/ls", "arch_libdir": "/lib/x86_64-linux-gnu"})
    manifest = parse_toml(text, name=str(template))
    assert manifest["libos"]["entrypoint"] == "/bin/ls"
    tfs = manifest["sgx"]["trusted_files"]
    assert tfs[0] == "file:/bin/ls"
    assert f"file:{host_libc()}" in tfs
    assert os.path.isdir(tfs[1][len("file:"):])
