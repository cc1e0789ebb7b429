"""The complete search: branch and bound on ReLU splits or on the input box."""
