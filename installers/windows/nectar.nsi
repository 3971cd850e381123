; Nectar for Windows: installs the PyInstaller bundle for the current user (no administrator rights), a Start menu
; entry, an optional start at login, and an uninstaller that leaves the user's settings and data in place.
;   makensis /DVERSION=0.1.0 /DBUNDLE_DIR=build\windows\dist\nectar /DOUTFILE=build\windows\Nectar-Setup.exe nectar.nsi
; BUNDLE_DIR must hold nectar.exe (the command line) and nectar-app.exe (the tray app, no console window).
; The login entry is the value "Nectar" under HKCU\...\Run, the same one agent/autostart.py writes and removes.

Unicode true
!include "MUI2.nsh"

!ifndef VERSION
  !define VERSION "0.0.0"
!endif
!ifndef BUNDLE_DIR
  !error "define BUNDLE_DIR: the PyInstaller bundle folder (dist\nectar)"
!endif
!ifndef OUTFILE
  !define OUTFILE "Nectar-${VERSION}-Setup.exe"
!endif
!define APP_EXE "nectar-app.exe"
!define RUN_KEY "Software\Microsoft\Windows\CurrentVersion\Run"
!define UNINSTALL_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\Nectar"

Name "Nectar"
OutFile "${OUTFILE}"
InstallDir "$LOCALAPPDATA\Programs\Nectar"
InstallDirRegKey HKCU "Software\Nectar" "InstallDir"
RequestExecutionLevel user
SetCompressor /SOLID lzma
VIProductVersion "${VERSION}.0"
VIAddVersionKey "ProductName" "Nectar"
VIAddVersionKey "FileDescription" "Nectar installer"
VIAddVersionKey "ProductVersion" "${VERSION}"
VIAddVersionKey "FileVersion" "${VERSION}"

!ifdef ICON
  !define MUI_ICON "${ICON}"
  !define MUI_UNICON "${ICON}"
!endif
!define MUI_FINISHPAGE_RUN "$INSTDIR\${APP_EXE}"
!define MUI_FINISHPAGE_RUN_TEXT "Start Nectar now"

!insertmacro MUI_PAGE_WELCOME
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_COMPONENTS
!insertmacro MUI_PAGE_INSTFILES
!insertmacro MUI_PAGE_FINISH
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

Section "Nectar" SecApp
  SectionIn RO
  ; An agent of an older version may be running: ask it to drain and stop before its files are replaced.
  IfFileExists "$INSTDIR\nectar.exe" 0 +2
    nsExec::Exec '"$INSTDIR\nectar.exe" stop'
  SetOutPath "$INSTDIR"
  File /r "${BUNDLE_DIR}\*.*"
  CreateShortcut "$SMPROGRAMS\Nectar.lnk" "$INSTDIR\${APP_EXE}" "run" "$INSTDIR\${APP_EXE}" 0
  WriteRegStr HKCU "Software\Nectar" "InstallDir" "$INSTDIR"
  WriteUninstaller "$INSTDIR\Uninstall.exe"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayName" "Nectar"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "Publisher" "Nectar"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayIcon" "$INSTDIR\${APP_EXE}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "UninstallString" '"$INSTDIR\Uninstall.exe"'
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoModify" 1
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoRepair" 1
SectionEnd

Section "Start Nectar when I log in" SecLogin
  WriteRegStr HKCU "${RUN_KEY}" "Nectar" '"$INSTDIR\${APP_EXE}" run'
SectionEnd

!insertmacro MUI_FUNCTION_DESCRIPTION_BEGIN
  !insertmacro MUI_DESCRIPTION_TEXT ${SecApp} "The Nectar app, its own Python and the embedded model."
  !insertmacro MUI_DESCRIPTION_TEXT ${SecLogin} "Start Nectar in the tray at login (can be changed later in Settings)."
!insertmacro MUI_FUNCTION_DESCRIPTION_END

Section "Uninstall"
  nsExec::Exec '"$INSTDIR\nectar.exe" stop'
  Sleep 2000
  DeleteRegValue HKCU "${RUN_KEY}" "Nectar"
  Delete "$SMPROGRAMS\Nectar.lnk"
  RMDir /r "$INSTDIR"
  DeleteRegKey HKCU "${UNINSTALL_KEY}"
  DeleteRegKey HKCU "Software\Nectar"
  ; %LOCALAPPDATA%\nectar (settings, data, logs, the converted model) belongs to the user and stays.
SectionEnd
