"""A user's own package, as `--model` / `--data` / `--loss` import paths name it in the tests."""
