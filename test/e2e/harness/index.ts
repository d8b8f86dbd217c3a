// The e2e harness in one import: labs (netns.ts), endpoints (qemu.ts), serial marks (serial.ts),
// timelines (timeline.ts), the test boot sector (mbr.ts), prerequisites and paths.
export { createLab, type Lab, type LabBridge, type LabOptions, type BridgeSpec, type CloseOptions, type ExecOptions, type ExecResult } from './netns.js';
export { startVm, debugExitStatus, type Vm, type VmExit, type StartVmOptions, type ExtraNic, type WaitOptions, type SerialLineRecord } from './qemu.js';
export { PSEUDO_MARKS, MarkParser, SerialScreen, type Mark, type PseudoMarkPattern, type ScreenLine } from './serial.js';
export { buildTimelines, phaseTime, renderPhaseTable, renderComparison, normalizeMac, type ServerEvent, type Timeline, type TimelineVm, type PhaseRow, type TimelineOptions, type RenderOptions } from './timeline.js';
export { buildMbr, writeMbrDisk, type Mbr, type MbrOptions } from './mbr.js';
export { assertE2ePrerequisites, OVMF_CODE, OVMF_VARS } from './preflight.js';
export { e2eRoot, runDir, keepLogsAlways } from './paths.js';
