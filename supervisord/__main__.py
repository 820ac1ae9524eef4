from supervisord.cli import main

main()
