from mktool.cli import main

main()
