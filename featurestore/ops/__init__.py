"""Operations: starting, supervising and stopping the processes of a stack, their logs and files."""
