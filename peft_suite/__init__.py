"""Run Hugging Face ``peft``'s own test suite against peftkit (docs/peft-compatibility.md).

``fetch`` unpacks the tests of the locked ``peft`` release into an ignored cache, ``alias/`` makes
``import peft`` resolve to peftkit's public objects, ``plugin`` classifies and records every test,
``run`` runs the files one at a time and ``report`` prints the method x file table.
"""
