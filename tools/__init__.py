"""Operator commands (run as scripts: .venv/bin/python tools/NAME.py); a package so one
command can reuse another's input handling (tools/cost.py takes tools/size.py's flags)."""
