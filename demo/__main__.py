from demo.cli import app

app()
