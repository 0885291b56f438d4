"""The deploy files (run by pyinfra) and the steps they are made of."""

from deploys.terminal import install_terminal

# Every pyinfra run of a deploy file imports this package first: colour and prompts are set up
# once, here (deploys/terminal.py says what and why).
install_terminal()
