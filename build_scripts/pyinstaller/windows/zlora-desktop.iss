; Inno Setup script of the ZLoRA Desktop Windows installer (per-user, no admin rights needed).
; build_app.py --installer runs:  iscc /DAppVersion=.. /DSourceDir=dist\ZLoRA-Desktop /DOutputDir=dist
;                                      /DOutputBase=.. /DIconFile=resources\icons\zlora-desktop.ico zlora-desktop.iss
#ifndef AppVersion
  #define AppVersion "0.0.0"
#endif
#ifndef SourceDir
  #define SourceDir "..\..\..\dist\ZLoRA-Desktop"
#endif
#ifndef OutputDir
  #define OutputDir "..\..\..\dist"
#endif
#ifndef OutputBase
  #define OutputBase "ZLoRA-Desktop-setup"
#endif
#ifndef IconFile
  #define IconFile "..\..\..\resources\icons\zlora-desktop.ico"
#endif

[Setup]
AppId={{6E0C8E0B-5C2B-4B0E-9C55-2B7A6F1D7A31}
AppName=ZLoRA Desktop
AppVersion={#AppVersion}
AppPublisher=ZLoRA Desktop
DefaultDirName={autopf}\ZLoRA Desktop
DefaultGroupName=ZLoRA Desktop
DisableProgramGroupPage=yes
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir={#OutputDir}
OutputBaseFilename={#OutputBase}
SetupIconFile={#IconFile}
UninstallDisplayIcon={app}\ZLoRA-Desktop.exe
Compression=lzma2/max
SolidCompression=yes
WizardStyle=modern

[Tasks]
Name: "desktopicon"; Description: "{cm:CreateDesktopIcon}"; GroupDescription: "{cm:AdditionalIcons}"; Flags: unchecked

[Files]
Source: "{#SourceDir}\*"; DestDir: "{app}"; Flags: ignoreversion recursesubdirs createallsubdirs

[Icons]
Name: "{autoprograms}\ZLoRA Desktop"; Filename: "{app}\ZLoRA-Desktop.exe"
Name: "{autodesktop}\ZLoRA Desktop"; Filename: "{app}\ZLoRA-Desktop.exe"; Tasks: desktopicon

[Run]
Filename: "{app}\ZLoRA-Desktop.exe"; Description: "{cm:LaunchProgram,ZLoRA Desktop}"; Flags: nowait postinstall skipifsilent
