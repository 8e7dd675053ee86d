//go:build !(linux && cgo)

package cuda

import (
	"fmt"
	"runtime"
	"unsafe"
)

type (
	cuContext   = unsafe.Pointer
	cuModule    = unsafe.Pointer
	cuFunction  = unsafe.Pointer
	cuStream    = unsafe.Pointer
	cuEvent     = unsafe.Pointer
	cuGraph     = unsafe.Pointer
	cuGraphExec = unsafe.Pointer
	cuGraphNode = unsafe.Pointer
	blasHandle  = unsafe.Pointer
)

const maxArgs = 24

func graphsAvailable() bool   { return false }
func pdlEdgesAvailable() bool { return false }

func (d *drvDevice) launchMany(cuStream, *kernelRecs, int, int) error { return load() }
func (d *drvDevice) graphBuild(*kernelRecs, int, int, []cuGraphNode, bool) (cuGraph, cuGraphExec, error) {
	return nil, nil, load()
}
func (d *drvDevice) graphRun(cuStream, cuGraphExec, []cuGraphNode, []int32, *kernelRecs, int, int) error {
	return load()
}
func (d *drvDevice) graphFree(cuGraph, cuGraphExec) error { return load() }

func load() error {
	return fmt.Errorf("%w: CUDA needs linux with cgo (this build: %s/%s)", ErrUnavailable, runtime.GOOS, runtime.GOARCH)
}

func drvDriverVersion() (int, error) { return 0, load() }
func drvDeviceCount() (int, error)   { return 0, load() }

type drvDevice struct{}

func drvOpenDevice(int) (*drvDevice, error)                        { return nil, load() }
func (d *drvDevice) release() error                                { return load() }
func (d *drvDevice) name() string                                  { return "" }
func (d *drvDevice) attr(int) (int, error)                         { return 0, load() }
func (d *drvDevice) totalMem() (int64, error)                      { return 0, load() }
func (d *drvDevice) memInfo() (int64, int64, error)                { return 0, 0, load() }
func (d *drvDevice) sync() error                                   { return load() }
func (d *drvDevice) loadModule([]byte) (cuModule, error)           { return nil, load() }
func (d *drvDevice) unloadModule(cuModule) error                   { return load() }
func (d *drvDevice) function(cuModule, string) (cuFunction, error) { return nil, load() }
func (d *drvDevice) setMaxDynamicShared(cuFunction, int) error     { return load() }
func (d *drvDevice) launch(cuFunction, [3]uint32, [3]uint32, uint32, cuStream, *argSlots) error {
	return load()
}
func (d *drvDevice) alloc(int) (DevPtr, error)                          { return 0, load() }
func (d *drvDevice) free(DevPtr) error                                  { return load() }
func (d *drvDevice) htod(DevPtr, []byte) error                          { return load() }
func (d *drvDevice) dtoh([]byte, DevPtr) error                          { return load() }
func (d *drvDevice) htodAsync(DevPtr, []byte, cuStream) error           { return load() }
func (d *drvDevice) dtohAsyncAddr(uintptr, DevPtr, int, cuStream) error { return load() }
func (d *drvDevice) dtodAsync(DevPtr, DevPtr, int, cuStream) error      { return load() }
func (d *drvDevice) hostRegister(uintptr, int) (DevPtr, error)          { return 0, load() }
func (d *drvDevice) hostUnregister(uintptr) error                       { return load() }
func (d *drvDevice) streamCreate() (cuStream, error)                    { return nil, load() }
func (d *drvDevice) streamDestroy(cuStream) error                       { return load() }
func (d *drvDevice) streamSync(cuStream) error                          { return load() }
func (d *drvDevice) eventCreate() (cuEvent, error)                      { return nil, load() }
func (d *drvDevice) eventRecord(cuEvent, cuStream) error                { return load() }
func (d *drvDevice) eventSync(cuEvent) error                            { return load() }
func (d *drvDevice) eventElapsed(cuEvent, cuEvent) (float32, error)     { return 0, load() }
func (d *drvDevice) eventDestroy(cuEvent) error                         { return load() }

func blasOpen(string, string) error                                   { return load() }
func (d *drvDevice) blasCreate() (blasHandle, error)                  { return nil, load() }
func (d *drvDevice) blasDestroy(blasHandle) error                     { return load() }
func (d *drvDevice) blasVersion(blasHandle) (int, error)              { return 0, load() }
func (d *drvDevice) blasBind(blasHandle, cuStream, DevPtr, int) error { return load() }
func (d *drvDevice) blasGemm(blasHandle, int, int, int, DevPtr, int, DevPtr, int, DevPtr, int) error {
	return load()
}
