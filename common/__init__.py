"""The leaf layer: small helpers every other layer may import (it imports none of them).

``npy`` reads and writes ``.npy`` bytes without pickle, ``cpus`` counts the CPUs this
process may use, ``tomlfile`` reads a named TOML file with one-line errors.
"""
