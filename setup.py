"""What pyproject.toml cannot say without experimental keys: the optional C module.

``geode.formats.pf._gcm`` drives OpenSSL's AES-GCM over protected-file nodes (see
src/geode/formats/pf/gcm.py for why). It is optional: without a C compiler or OpenSSL's
headers the build goes on without it and Geode uses ``cryptography`` for the same results.
"""

from setuptools import Extension, setup

setup(ext_modules=[
    Extension(
        "geode.formats.pf._gcm",
        sources=["src/geode/formats/pf/_gcm.c"],
        libraries=["crypto"],
        extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        optional=True,
    ),
])
