"""``python3 -m dynamo.frontend`` (see ``dynamo.frontend.main``)."""

from dynamo.frontend.main import main

main()
