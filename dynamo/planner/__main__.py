from dynamo.planner.main import main

main()
