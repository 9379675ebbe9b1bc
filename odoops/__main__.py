from odoops.cli import main

main()
