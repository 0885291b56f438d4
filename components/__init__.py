"""gpufleet's components, one folder each (``components/<name>/``): its settings, its rules, its
deploy, what it manages and a README. See rules/component.py for the protocol and
docs/architecture.md for adding one.

A component's modules sit in the layers like the rest of the tree: ``manages.py`` is plain
data (read by facts.coverage), ``decisions.py`` is pure rules, ``deploy.py`` calls operations
only, and ``component.py`` joins them into the record the runner's entries name.
"""
