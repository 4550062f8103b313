from dynamo.frontend.main import main

main()
