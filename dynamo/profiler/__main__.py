from dynamo.profiler.main import main

main()
