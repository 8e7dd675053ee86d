package httpapi

import (
	"fmt"
	"net/http"

	"github.com/labstack/echo/v4"

	"github.com/driftstore/driftstore/httpapi/wire"
	"github.com/driftstore/driftstore/index"
)

// Routes over a whole data directory (Config.Repo), for CLI commands run with --server:
//
//	GET  /v1/catalog                  []repo.Entry, newest first (driftstore ls)
//	GET  /v1/resolve?name=S           {"id": ID} for an ID, a unique ID prefix or a tag (repo.Resolve)
//	GET  /v1/manifests/{id}/inspect   repo.Inspection (driftstore inspect)
//	POST /v1/gc                       wire.GCRequest → repo.GCResult
//	POST /v1/fsck                     wire.FsckRequest → index.FsckResult (problems in the body, still 200)

func (s *Server) registerRepoRoutes(e *echo.Echo) {
	e.GET("/v1/catalog", s.catalog)
	e.GET("/v1/resolve", s.resolve)
	e.GET("/v1/manifests/:id/inspect", s.inspect)
	e.POST("/v1/gc", s.gc)
	e.POST("/v1/fsck", s.fsck)
}

func (s *Server) catalog(c echo.Context) error {
	entries, err := s.cfg.Repo.List()
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, entries)
}

func (s *Server) resolve(c echo.Context) error {
	name := c.QueryParam("name")
	if name == "" || len(name) > 200 {
		return fmt.Errorf("%w: resolve needs ?name= (1..200 characters)", errBadRequest)
	}
	id, err := s.cfg.Repo.Resolve(name)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]string{"id": id.String()})
}

func (s *Server) inspect(c echo.Context) error {
	id, err := idParam(c)
	if err != nil {
		return err
	}
	in, err := s.cfg.Repo.Inspect(id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, in)
}

func (s *Server) gc(c echo.Context) error {
	if err := s.writable(); err != nil {
		return err
	}
	var req wire.GCRequest
	if err := decodeJSON(c, s.cfg.MaxJSONSize, &req); err != nil {
		return err
	}
	res, err := s.cfg.Repo.GC(c.Request().Context(), index.GCOptions{Grace: req.Grace, DryRun: req.DryRun})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, res)
}

func (s *Server) fsck(c echo.Context) error {
	var req wire.FsckRequest
	if err := decodeJSON(c, s.cfg.MaxJSONSize, &req); err != nil {
		return err
	}
	if req.Workers < 0 || req.Workers > 256 {
		return fmt.Errorf("%w: workers %d", errBadRequest, req.Workers)
	}
	res, err := s.cfg.Repo.Fsck(c.Request().Context(), index.FsckOptions{Workers: req.Workers})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, res)
}
