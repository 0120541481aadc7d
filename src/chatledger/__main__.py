from chatledger.cli import main

main()
